"""Live figures for the tabular notebooks: sliders in JupyterLab, one static figure in the pipeline.

    fig = explore.figure(draw, compute, first, live=interactive,
                         beta=explore.Slider(beta, 0.1, 2.0, 0.05, "β"), ...)

``compute(**values)`` returns the data a figure shows at the sliders' values (a call into the same
``pluralign`` functions the notebook uses) and ``draw(data)`` returns the matplotlib Figure.
``first`` is the data the notebook already computed at the sliders' initial values (its params),
so the figure the notebook saves is drawn from exactly those numbers and nothing is computed twice.

* **static** — ``live`` false (the pipeline: ``notebooks/run_stage.py`` injects
  ``interactive = False`` into every notebook that declares it), ipywidgets not installed, or no
  IPython kernel: ``draw(first)`` once, returned. No widget is created, so no widget view or
  widget state can reach the stored executed notebook, and the figure is the one the cell always drew.
* **live** — the sliders and an output area are displayed; the first figure is drawn into it from
  ``first`` and returned (the notebook saves it, under scratch/ when run by hand); each slider
  release calls ``compute`` and redraws, and a line under the figure says how long that took.
  The redraw runs on one thread (torch, and SciPy's BLAS): the tabular kernels are tiny, and
  thread hand-offs cost more than they save (on a 2-core machine busy with other work, notebook
  01's sweep ran 20x slower on two torch threads than on one, SciPy's L-BFGS in
  ``nash.regularised_nash`` 3.6x slower on two BLAS threads).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Slider", "figure", "can_go_live", "LiveFigure", "one_thread"]


@dataclass(frozen=True)
class Slider:
    """A slider's initial value (the notebook's param), range and step; an integer slider when all
    four are ints.  The range is widened to hold the initial value, so any valid param works."""

    value: float
    lo: float
    hi: float
    step: float
    label: str | None = None

    def __post_init__(self):
        if self.step <= 0:
            raise ValueError(f"slider {self.label or ''}: step must be > 0, got {self.step}")
        object.__setattr__(self, "lo", min(self.lo, self.value))
        object.__setattr__(self, "hi", max(self.hi, self.value))

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.value, self.lo, self.hi, self.step))

    def widget(self, name: str):
        import ipywidgets as w

        kind = w.IntSlider if self.integer else w.FloatSlider
        return kind(value=self.value, min=self.lo, max=self.hi, step=self.step, description=self.label or name,
                    continuous_update=False, style={"description_width": "initial"})


def can_go_live() -> bool:
    """True inside an IPython kernel with ipywidgets importable (a frontend may then show widgets)."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


@contextlib.contextmanager
def one_thread():
    """torch, and the BLAS / OpenMP pools under NumPy and SciPy (threadpoolctl, which scikit-learn
    brings), on one thread inside the block; restored after."""
    import torch

    n = torch.get_num_threads()  # before threadpoolctl, which limits torch's OpenMP pool too
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # only torch then
        pools = contextlib.nullcontext()
    else:
        pools = threadpool_limits(1)  # applied here, restored when the block ends
    torch.set_num_threads(1)
    try:
        with pools:
            yield
    finally:
        torch.set_num_threads(n)


class LiveFigure:
    """The sliders, the output area and the redraw; ``seconds`` is the last redraw's compute + draw time."""

    def __init__(self, draw: Callable[[Any], Any], compute: Callable[..., Any], controls: dict[str, Slider]):
        import ipywidgets as w

        self.draw, self.compute = draw, compute
        self.sliders = {name: c.widget(name) for name, c in controls.items()}
        self.output = w.Output()
        self.status = w.Label()
        self.box = w.VBox([w.HBox(list(self.sliders.values()), layout=w.Layout(flex_flow="row wrap")),
                           self.output, self.status])
        self.seconds: float | None = None
        for s in self.sliders.values():
            s.observe(self.redraw, names="value")

    def values(self) -> dict:
        return {name: s.value for name, s in self.sliders.items()}

    def show(self, data):
        """Draw ``data`` into the output area (replacing what was there) and return the figure."""
        import matplotlib.pyplot as plt
        from IPython.display import display

        with self.output:
            self.output.clear_output(wait=True)
            fig = self.draw(data)
            display(fig)
        plt.close(fig)  # shown once, in the output area (the inline backend would show it again)
        return fig

    def redraw(self, change=None):
        t0 = time.perf_counter()
        try:
            with one_thread():
                self.show(self.compute(**self.values()))
        except Exception as e:  # a value the kernels refuse: say so under the figure, keep the sliders
            self.status.value = f"not redrawn: {type(e).__name__}: {e}"
            return
        self.seconds = time.perf_counter() - t0
        self.status.value = f"recomputed and drawn in {self.seconds:.2f} s"


def figure(draw: Callable[[Any], Any], compute: Callable[..., Any], first, live: bool, note: str = "",
           **controls: Slider):
    """The figure at the notebook's values; live, also sliders that redraw it (see the module doc).
    ``note``: shown under the live figure until the first move (what a redraw recomputes)."""
    if not (live and can_go_live()):
        return draw(first)
    from IPython.display import display

    view = LiveFigure(draw, compute, controls)
    display(view.box)
    view.status.value = (f"{note}; " if note else "") + "move a slider to recompute (the first figure is the notebook's own)"
    return view.show(first)
