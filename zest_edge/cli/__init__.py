"""The `zest-edge` command line: argument checking and printing over the Python API, nothing else.

One module per group of commands (inspect, train, measure, deploy); options several share live in options.py.
"""
import sys

import click

from ..errors import ZestError, first_line
from . import deploy, inspect, measure, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="zest-edge")
def cli():
    """zest-edge: pick the few layers worth fine-tuning from one minibatch, train only those, ship them to ORT."""


for command in (inspect.doctor, inspect.models, inspect.layers, inspect.metrics, inspect.rank,
                train.finetune, train.evaluate, train.contrib, train.train_predictor, train.eval_predictor,
                measure.profile, measure.benchmark,
                deploy.export, deploy.device_train, deploy.build_engine, deploy.demo):
    cli.add_command(command)


def main():
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(standalone_mode=False)
    except ZestError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:                # an OS error no writer or reader turned into a ZestError: still one line
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or first_line(e)}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
