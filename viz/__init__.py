"""Pictures of computations, kept out of the engine's core.

``viz.graph`` walks the graph behind any result (``Tensor.creator`` -> ``Function.inputs``):
``to_dot`` writes Graphviz DOT, ``render_dot`` turns it into a PNG where Graphviz is
installed, ``draw_graph`` draws it with Pillow alone, ``draw_network`` a whole network with
matplotlib (the paper's Figure 3 style); ``values={"a": a, ...}`` puts each
named tensor's value and gradient on its node. Export before ``backward()``, which releases
the graph as it goes.
"""
from .graph import build_graph, draw_network, gradients, layout, to_dot
from .graph import draw_png as draw_graph
from .graph import render as render_dot

__all__ = ["to_dot", "render_dot", "draw_graph", "draw_network", "build_graph", "gradients",
           "layout"]
