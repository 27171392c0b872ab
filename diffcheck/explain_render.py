"""The explain graph as a picture (SVG or PNG, matplotlib), laid out like the tutorials' figure: inputs on the left,
the output on the right, the forward value in each node, and on every edge the local derivative (black, above) and
the chain-rule product flowing back (red, below).

Layout: each node's column is its longest path from an input (a layered, Sugiyama-style layout); within a column
nodes are ordered by the mean row of what they read, so edges rarely cross in these small graphs. No graph library
is a dependency of diffcheck and Graphviz's ``dot`` is not installed here or in CI, so the layout is computed here
(deterministic, about 20 lines) and matplotlib, already a dependency, draws it.
"""

from __future__ import annotations

import numpy as np

from .explain import Graph, show

COL_W, ROW_H = 2.9, 1.55  # inches per column and row


def layout(graph: Graph) -> dict[int, tuple[float, float]]:
    """(column, row) per node: column = longest path from an input; rows by the barycentre of the inputs."""
    col: dict[int, int] = {}
    for slot in sorted(graph.nodes):  # slots are in topological order: longest path from an input
        col[slot] = 1 + max((col[a] for a in graph.nodes[slot].inputs), default=-1)
    for slot in sorted(graph.nodes, reverse=True):  # then as late as possible: each node just left of its first
        readers = [s for s, n in graph.nodes.items() if slot in n.inputs]  # reader (a -> add, no long edges)
        if readers:
            col[slot] = min(col[r] for r in readers) - 1
    columns: dict[int, list[int]] = {}
    for slot, c in sorted(col.items()):
        columns.setdefault(c, []).append(slot)
    rows: dict[int, float] = {}
    for c in sorted(columns):
        members = columns[c]
        if c:
            members.sort(key=lambda s: np.mean([rows[a] for a in graph.nodes[s].inputs]) if graph.nodes[s].inputs
                         else 0.0)
        n = len(members)
        for k, s in enumerate(members):
            rows[s] = k - (n - 1) / 2
    return {s: (float(col[s]), rows[s]) for s in graph.nodes}


def _node_text(node) -> str:
    shape = f" {list(node.shape)}" if node.shape else ""
    what = node.op if not node.args else f"{node.op}({', '.join(node.args)})"
    return f"{node.name} = {what}{shape}\n= {show(node.value, 4)}"


def _grad_text(node, engine: str) -> str:
    lines = [f"d out/d {node.name} = {show(node.grads.get('symbolic'), 4)} (symbolic)"]
    for key, label in ((engine, engine), ("finite differences", "finite diff.")):
        if key in node.grads:
            lines.append(f"{label}: {show(node.grads[key], 4)}{' (wrong)' if key == engine and node.departs else ''}")
    return "\n".join(lines)


def _edge_texts(graph: Graph, e) -> tuple[str, str]:
    """An edge's local derivative (forward label) and the chain-rule product flowing back along it."""
    src, dst = graph.nodes[e.src], graph.nodes[e.dst]
    value = show(e.local_value, 4) if e.local_value is not None else None
    local = e.local if value is None or value.split(" (")[0] == e.local else f"{e.local}\n= {value}"
    forward = f"d{dst.name}/d{src.name} = {local}"
    if not e.active:
        return forward, ""
    share = "+" if sum(1 for e2 in graph.edges if e2.src == e.src and e2.active) > 1 else ""
    if np.ndim(e.contribution) or np.ndim(dst.adjoint):  # tensors: the product alone, the factors are above
        return forward, f"d out/d {src.name} {share}=\n{show(e.contribution, 4)}"
    factor = show(e.local_value, 3) if e.local_value is not None else e.local
    return forward, f"d out/d {src.name} {share}= {show(dst.adjoint, 3)} x {factor} = {show(e.contribution, 3)}"


def _stepped(graph: Graph) -> bool:
    """Whether the impl's departure is marked per step (on edges) rather than per input."""
    return any(e.departs for e in graph.edges)


def figure(graph: Graph):
    """A matplotlib Figure of the graph (no pyplot: nothing global, works headless)."""
    from matplotlib.figure import Figure

    pos = layout(graph)
    cols = int(max(c for c, _ in pos.values())) + 1
    rows = max(sum(1 for c2, _ in pos.values() if c2 == c) for c in range(cols))
    box = max(len(line) for n in graph.nodes.values() for line in _node_text(n).splitlines())
    label = max([len(line) for e in graph.edges for t in _edge_texts(graph, e) for line in t.splitlines()] + [0])
    col_w = max(COL_W, 0.075 * (box + label) + 0.4)  # a box and an edge label side by side at 8.5-9 points
    row_h = ROW_H * (1.35 if any(n.shape for n in graph.nodes.values()) else 1.0)
    noted = [s for s, n in graph.nodes.items() if n.departs and not _stepped(graph)]  # per step: the edge says it
    extra = 1.0 if noted else 0.0  # room for the departure note
    extra += 0.6 if any(e.departs for e in graph.edges) else 0.0  # and for a marked edge's
    width, height = max(8.0, col_w * cols + 1.0), max(3.2, row_h * rows + 1.6) + 1.4 * extra
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 0.86))
    ax.set_xlim(-0.6, cols - 0.4)
    ax.set_ylim(-rows / 2 - 0.45 - extra, rows / 2 + 0.05)
    ax.axis("off")
    where = next((n.split(" (")[0].split(";")[0] for n in graph.notes if n.startswith(graph.localisation)), "") \
        if graph.localisation else ""  # "per step: the impl's intermediates t1, t2 were matched"
    fig.suptitle(f"{graph.expr}\nforward left to right, values in the nodes; backward in red: "
                 "d out/d src = d out/d dst x d dst/d src" + (f"\nthe impl's departure, {where}" if where else ""),
                 fontsize=10, parse_math=False)

    def xy(slot):
        c, r = pos[slot]
        return c, -r * 0.95

    boxes = {}
    for slot, node in graph.nodes.items():
        x, y = xy(slot)
        inactive = node.adjoint is None
        face = "#fde0dc" if node.departs else ("#eeeeee" if inactive else ("#e3f0ff" if node.grads else "#fff8e1"))
        boxes[slot] = ax.text(x, y, _node_text(node), ha="center", va="center", fontsize=9, family="monospace",
                              parse_math=False, bbox=dict(boxstyle="round,pad=0.4", fc=face,
                                                          ec="darkred" if node.departs else "0.3",
                                                          lw=2 if node.departs else 1))
        if node.adjoint is not None and not node.grads:
            impl = "" if node.impl_adjoint is None else f"\nimpl: {show(node.impl_adjoint, 4)}"
            ax.text(x, y - 0.27, f"d out/d {node.name} = {show(node.adjoint, 4)}{impl}", ha="center", va="top",
                    fontsize=8.5, color="darkred" if node.impl_says else "red",
                    fontweight="bold" if node.impl_says else "normal")
        if node.grads:
            ax.text(x, y - 0.27, _grad_text(node, graph.engine), ha="center", va="top", fontsize=8.5, color="red")
        if node.departs:
            import textwrap

            lines = 2 + len(node.grads)
            if slot in noted:
                ax.text(x, y - 0.3 - 0.11 * lines, "departs from the chain rule here:\n" +
                        textwrap.fill(node.departs, 44), ha="center", va="top", fontsize=8, color="darkred",
                        fontweight="bold")
    for e in graph.edges:
        (x0, y0), (x1, y1) = xy(e.src), xy(e.dst)
        src = graph.nodes[e.src]
        bad = bool(e.departs) if _stepped(graph) else bool(src.departs)
        ax.annotate("", xy=(0.0, 0.5), xycoords=boxes[e.dst], xytext=(1.0, 0.5), textcoords=boxes[e.src],
                    arrowprops=dict(arrowstyle="->", color="red" if e.departs else "darkred" if bad else "0.35",
                                    lw=2.4 if e.departs else 1.2, ls="--" if e.departs else "-", shrinkA=6,
                                    shrinkB=6))
        t = 1 - 0.5 / max(x1 - x0, 1.0)  # half a column before the destination: long edges clear the nodes between
        mx, my = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
        forward, backward = _edge_texts(graph, e)
        ax.text(mx, my + 0.07, forward, ha="center", va="bottom", fontsize=8.5)
        if backward:
            ax.text(mx, my - 0.07, backward, ha="center", va="top", fontsize=8.5,
                    color="red" if not bad else "darkred", fontweight="bold" if bad else "normal")
        if e.departs:
            drop = 0.1 * (1 + backward.count("\n"))
            ax.text(mx, my - 0.12 - drop, "impl's backward DEPARTS here:\n" + e.mark,
                    ha="center", va="top", fontsize=8, color="darkred", fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="red", ls="--"))
    return fig


def save(graph: Graph, path, fmt) -> None:
    """Write the picture; SVG keeps its labels as text (searchable, smaller) rather than outlines."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure(graph).savefig(path, format=fmt, dpi=100)
