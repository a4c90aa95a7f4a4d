"""The 19 zero-shot metrics. W weight, G weight gradient, X output activation, dX its gradient."""
from .core import measure


@measure("wt_avg")
def wt_avg(t): return t.weight.mean()


@measure("wt_std")
def wt_std(t): return t.weight.std()


@measure("wt_abs_avg")
def wt_abs_avg(t): return t.weight.abs().mean()


@measure("wt_abs_std")
def wt_abs_std(t): return t.weight.abs().std()


@measure("act_avg", needs="data")
def act_avg(t): return t.act.mean()


@measure("act_std", needs="data")
def act_std(t): return t.act.std()


@measure("act_abs_avg", needs="data")
def act_abs_avg(t): return t.act.abs().mean()


@measure("act_abs_std", needs="data")
def act_abs_std(t): return t.act.abs().std()


@measure("grad_norm", needs="data")
def grad_norm(t): return t.grad.norm()


@measure("rgn", needs="data")
def rgn(t): return t.grad.norm() / t.weight.norm()          # relative gradient norm (surgical fine-tuning's)


@measure("grad_avg", needs="data")
def grad_avg(t): return t.grad.mean()


@measure("grad_std", needs="data")
def grad_std(t): return t.grad.std()


@measure("grad_abs_avg", needs="data")
def grad_abs_avg(t): return t.grad.abs().mean()


@measure("grad_abs_std", needs="data")
def grad_abs_std(t): return t.grad.abs().std()


@measure("plain", needs="data")
def plain(t): return (t.grad * t.weight).sum()


@measure("snip", needs="data")
def snip(t): return (t.grad * t.weight).abs().sum()


@measure("grasp", needs="hvp")
def grasp(t): return -(t.hvp * t.weight).sum()


@measure("fisher", needs="data")
def fisher(t):
    """Σ_channels ½·mean_batch (Σ_positions X⊙dX)²; channels are dim 1 for convs, the last dim for linears."""
    prod = t.act * t.act_grad
    if prod.dim() == 4:                      # conv: [B, C, H, W]
        per_channel = prod.sum((2, 3))
    else:                                    # linear: [B, ..., C]
        per_channel = prod.flatten(1, -2).sum(1) if prod.dim() > 2 else prod
    return (0.5 * per_channel.pow(2).mean(0)).sum()


@measure("synflow", needs="synflow")
def synflow(t): return (t.synflow_grad * t.synflow_weight).abs().sum()
