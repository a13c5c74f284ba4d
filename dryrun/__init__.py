"""The virtual-time dry run: the real controller (supervisor, executor, envelope, records) and
the simulated line in one process and one event loop, over the real protocols on loopback,
with every timer on one virtual clock that jumps ahead whenever every task waits.

domain.md rule 7's one exception, allowed only against the simulator: this package is the only
place that imports both the controller and the simulators (a composition root, like a test), and
nothing imports it; ``povd run RECIPE --sim --virtual-time`` starts it as its own process."""
