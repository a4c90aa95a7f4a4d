"""Plain-text tables for the terminal."""

TABLE_METRICS = ("grad_norm", "snip", "grasp", "fisher", "synflow", "act_std", "wt_abs_avg")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def number(value, digits: int = 4) -> str:
    """A metric or score for a table: `digits` significant digits, "n/a" for a null (non-finite) one."""
    return "n/a" if value is None else f"{value:.{digits}g}"


def layer_table(layers, role=None) -> str:
    """One row per layer; with `role` (name -> role, from the model's spec) a role column too."""
    rows = [[l.index, l.name, l.type, "x".join(map(str, l.shape)), f"{l.params:,}", f"{l.depth:.2f}"] for l in layers]
    if role is None:
        return table(["#", "layer", "type", "shape", "params", "depth"], rows)
    return table(["#", "layer", "type", "role", "shape", "params", "depth"],
                 [[*r[:3], role(l.name) or "-", *r[3:]] for r, l in zip(rows, layers)])


def metrics_table(record: dict) -> str:
    shown = [m for m in TABLE_METRICS if m in record["metric_names"]] or record["metric_names"][:7]
    rows = [[l["index"], l["name"], l["type"], f"{l['params']:,}", *(number(l["metrics"][m], 3) for m in shown)]
            for l in record["layers"]]
    note = "" if len(shown) == len(record["metric_names"]) else f"\n({len(record['metric_names'])} metrics in the JSON/CSV; {len(shown)} shown)"
    return table(["#", "layer", "type", "params", *shown], rows) + note
