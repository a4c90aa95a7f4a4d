"""Shared matplotlib helpers: figures on the Agg canvas (no pyplot, no global backend switch), written atomically."""
import io

from .io import atomic_write_bytes

COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
          "#64B5CD")


def figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.4, height: float = 4.0):
    """(Figure, axes as a flat list) on an Agg canvas; width/height are per panel, in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def grouped_bars(ax, categories: list[str], series: dict[str, list], *, ylabel: str = "", title: str = "",
                 labels: bool = True, fmt: str = "{:.0f}") -> None:
    """One group of bars per category, one bar per series; None / NaN values leave a gap (marked n/a)."""
    import math
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [c + (i - (n - 1) / 2) * width for c in range(len(categories))]
        ys = [v if v is not None and not (isinstance(v, float) and math.isnan(v)) else 0.0 for v in values]
        bars = ax.bar(xs, ys, width * 0.95, label=name, color=color(i))
        if labels:
            for bar, v in zip(bars, values):
                missing = v is None or (isinstance(v, float) and math.isnan(v))
                ax.annotate("n/a" if missing else fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def curves(ax, lines: dict[str, tuple], *, xlabel: str = "", ylabel: str = "", title: str = "") -> None:
    """One line per entry: name -> (xs, ys) or (xs, ys, std) (std drawn as a band)."""
    styles = ("-", "--", "-.", ":")
    for i, (name, line) in enumerate(lines.items()):
        xs, ys = line[0], line[1]
        ax.plot(xs, ys, styles[(i // len(COLORS)) % len(styles)], marker="o", markersize=3, label=name, color=color(i))
        if len(line) > 2 and line[2] is not None:
            lo = [y - s for y, s in zip(ys, line[2])]
            hi = [y + s for y, s in zip(ys, line[2])]
            ax.fill_between(xs, lo, hi, alpha=0.12, color=color(i))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def save(fig, path, dpi: int = 120) -> None:
    """PNG bytes written atomically (a kill never leaves a torn image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
