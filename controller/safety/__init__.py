"""Safety as a level (domain.md rule 10): the envelope (what the present conditions allow and
require of every actuator), the single writer that refuses anything outside it, and the
reconciler that drives every output back inside it each safety cycle.

Nothing outside this package calls a driver's setter; the only named exceptions are the
heartbeat (written by the safety cycle itself) and each drive's communication watchdog,
configured once at connect (``tests/unit/test_single_writer.py`` holds that line)."""
