"""The operator HMI served by `povd serve` at ``/``: its pages and assets (plain HTML, JS and
CSS from the package, the vendored uPlot; nothing from the internet), the browser's cookie
session with its CSRF check and idle logout, and the live feed (server-sent events from the
supervisor's fan-out). Commands go through the same HTTP API, roles and audit as every other
client; this package only shapes what a screen needs."""
