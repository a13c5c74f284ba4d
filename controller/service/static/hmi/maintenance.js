"use strict";
// The maintenance page: hold-to-jog on the controller's lease (renewed every 100 ms while
// held; releasing, leaving the page, losing focus or the network lets it stop), increments,
// home, move to a position, and device tests. Every refusal shown is the service's own.
(() => {
  const { el, setText, fmt } = HMI;
  const RENEW_MS = 100;
  const KEYS = { ArrowLeft: -1, ArrowRight: 1, ArrowDown: -1, ArrowUp: 1 };
  let line = null;
  let status = null;
  let keyAxis = "carriage";

  // One motion at a time from this page: a jog or a move, renewed until it ends.
  const motion = {
    active: null, // {axis, command, args}
    timer: null,
    inflight: Promise.resolve(),
    start(axis, command, args, until) {
      if (this.active) return;
      this.active = { axis, command, args, until };
      this.renew();
      this.timer = setInterval(() => this.renew(), RENEW_MS);
      markActive();
    },
    renew() {
      const active = this.active;
      if (!active) return;
      // One request at a time, so a late renewal can never restart the axis after its stop.
      this.inflight = this.inflight.then(async () => {
        if (this.active !== active) return;
        const reply = await HMI.command(active.command, { axis: active.axis, ...active.args });
        if (!reply.accepted) {
          HMI.report(reply);
          this.end(false);
        } else if (active.until && active.until(reply)) this.end(false);
      });
    },
    end(sendStop = true, keepalive = false) {
      const active = this.active;
      if (!active) return;
      this.active = null;
      clearInterval(this.timer);
      markActive();
      if (!sendStop) return;
      this.inflight = this.inflight.then(() => HMI.command("jog_stop", { axis: active.axis }, undefined, { keepalive }))
        .then((reply) => { if (!reply.accepted) HMI.report(reply); });
    },
  };

  function markActive() {
    for (const button of document.querySelectorAll("button.jog")) {
      const on = motion.active && motion.active.command === "jog" && motion.active.axis === button.dataset.axis
        && String(motion.active.args.direction) === button.dataset.direction;
      button.classList.toggle("active", Boolean(on));
    }
  }

  function jogButton(axis, direction, label) {
    const button = el("button", {
      class: "jog", type: "button", "data-axis": axis, "data-direction": direction,
      "aria-label": `jog ${axis} ${direction}`,
    }, label);
    button.addEventListener("pointerdown", (event) => {
      button.setPointerCapture(event.pointerId);
      motion.start(axis, "jog", { direction });
    });
    for (const kind of ["pointerup", "pointercancel", "lostpointercapture"]) {
      button.addEventListener(kind, () => motion.end());
    }
    return button;
  }

  function moveTo(axis, position) {
    motion.start(axis, "move", { position_mm: position }, (reply) => reply.data && reply.data.lease === "arrived");
  }

  function buildAxes() {
    const rows = Object.entries(line.axes).map(([axis, cfg]) => {
      const linear = cfg.motion === "linear";
      const radio = el("input", { type: "radio", name: "key-axis", value: axis, checked: axis === keyAxis,
        "aria-label": `keyboard jogs ${axis}`, onchange: () => { keyAxis = axis; } });
      const step = el("input", { type: "number", value: "10", step: "1", min: "0", id: `step-${axis}`, "aria-label": `${axis} increment mm` });
      const target = el("input", { type: "number", step: "0.1", id: `target-${axis}`, "aria-label": `${axis} target mm`,
        min: cfg.min_position_mm, max: cfg.max_position_mm });
      const position = () => status && status.telemetry.axes[axis] ? status.telemetry.axes[axis].position_mm : 0;
      return el("tr", { class: "axis-row", "data-axis": axis },
        el("td", {}, radio, " ", axis),
        el("td", { class: "num" }, el("b", { id: `pos-${axis}` }, "—"), linear ? " mm" : ""),
        el("td", { class: "num", id: `vel-${axis}` }, "—"),
        el("td", { id: `homed-${axis}` }, "—"),
        el("td", { id: `limits-${axis}` }, linear ? `${cfg.min_position_mm}…${cfg.max_position_mm} mm` : "rotary"),
        el("td", {}, jogButton(axis, "-", "◀ −"), " ", jogButton(axis, "+", "+ ▶")),
        el("td", {}, linear ? [step, el("button", { type: "button", class: "step", onclick: () => moveTo(axis, position() - Number(step.value)) }, "−"),
          el("button", { type: "button", class: "step", onclick: () => moveTo(axis, position() + Number(step.value)) }, "+")] : "—"),
        el("td", {}, linear ? [target, el("button", { type: "button", class: "move", onclick: () => moveTo(axis, Number(target.value)) }, "Go")] : "—"),
        el("td", {},
          el("button", { type: "button", class: "home", "data-axis": axis, onclick: async () => HMI.report(await HMI.command("home", { axis }), `${axis}: homing`) }, "⌂ Home"), " ",
          el("button", { type: "button", class: "axis-stop", onclick: () => { motion.end(false); HMI.command("jog_stop", { axis }).then((r) => HMI.report(r, `${axis}: stopped`)); } }, "■ Stop")));
    });
    document.getElementById("axes").replaceChildren(...rows);
    const select = document.getElementById("test-mfc");
    select.replaceChildren(...Object.entries(line.mfcs).map(([name, m]) => el("option", { value: name }, `${m.gas} (${name}, ≤ ${m.full_scale_slpm} slpm)`)));
    setText("test-power-max", `at most ${line.device_test_max_power_kw} kW`);
  }

  function render(s) {
    status = s;
    setText("machine", `${s.line}/${s.machine}`);
    setText("state", s.state);
    document.getElementById("state").dataset.state = s.state;
    setText("mode", s.mode);
    const other = s.mode === "maintenance" ? "production" : "maintenance";
    const toggle = document.getElementById("mode-toggle");
    toggle.textContent = `Switch to ${other}`;
    toggle.dataset.target = other;
    toggle.disabled = Boolean(s.commands.mode);
    setText("mode-why", s.commands.mode || "");
    const why = s.commands.jog;
    setText("maintenance-why", why ? `Motion: ${why}` : "");
    for (const button of document.querySelectorAll("button.jog, button.step, button.move, button.home")) {
      button.disabled = Boolean(why && !(motion.active && button.classList.contains("jog")));
      button.title = why || "";
    }
    for (const id of ["test-flow-start", "test-rf-start"]) document.getElementById(id).disabled = Boolean(s.commands.device_test);
    setText("test-why", s.commands.device_test || "");
    if (why && motion.active) motion.end(false);
    for (const [axis, a] of Object.entries(s.telemetry.axes || {})) {
      setText(`pos-${axis}`, fmt(a.position_mm, 1));
      setText(`vel-${axis}`, a.moving ? `${fmt(a.velocity, 0)} ${line ? line.axes[axis].unit : ""}` : "stopped");
      setText(`homed-${axis}`, a.homed ? "✔ yes" : "✖ no");
      if (line && line.axes[axis].motion === "linear") {
        const flags = [a.limit_negative ? "✖ at − limit" : "", a.limit_positive ? "✖ at + limit" : ""].filter(Boolean).join(" ");
        setText(`limits-${axis}`, `${line.axes[axis].min_position_mm}…${line.axes[axis].max_position_mm} mm ${flags}`);
      }
    }
    const io = s.telemetry.safety || {};
    const inputs = [["estop_ok", "E-stop chain closed"], ["safety_relay_ok", "safety relay closed"],
      ["doors_closed", "doors closed (else setup speed, RF off)"], ["scrubber_ready", "scrubber ready"],
      ["gas_supply_ok", "gas supply pressure"], ["heartbeat_ok", "PLC heartbeat"]];
    document.getElementById("io").replaceChildren(...inputs.map(([key, label]) => el("li", { class: io[key] ? "good" : "bad", "data-input": key },
      el("span", { class: "mark" }, io[key] ? "✔ OK" : "✖ NO"), " ", label)));
  }

  async function deviceTest(args, done) {
    HMI.report(await HMI.command("device_test", args), done);
  }

  function stopEverything() {
    motion.end(true, true);
  }

  HMI.onLogin(async () => {
    const result = await HMI.request("GET", "/hmi/api/line");
    if (!result.ok) return;
    line = result.data;
    buildAxes();
  });
  HMI.on("status", render);

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("mode-toggle").addEventListener("click", async (event) => {
      const target = event.currentTarget.dataset.target;
      HMI.report(await HMI.command("mode", { mode: target }), `mode: ${target}`);
    });
    document.getElementById("test-flow-start").addEventListener("click", () => {
      const device = document.getElementById("test-mfc").value;
      deviceTest({ device, flow_slpm: Number(document.getElementById("test-flow").value) }, `${device}: flow test running`);
    });
    document.getElementById("test-flow-stop").addEventListener("click", () => {
      deviceTest({ device: document.getElementById("test-mfc").value, flow_slpm: 0 }, "flow test ended");
    });
    document.getElementById("test-rf-start").addEventListener("click", () => {
      deviceTest({ device: "rf", power_kw: Number(document.getElementById("test-power").value) }, "RF test running");
    });
    document.getElementById("test-rf-stop").addEventListener("click", () => deviceTest({ device: "rf", power_kw: 0 }, "RF off"));
    // Keyboard jogging while an arrow key is held (its repeats ignored), as in LinuxCNC.
    document.addEventListener("keydown", (event) => {
      if (!(event.key in KEYS) || event.repeat || event.target.matches("input, select")) return;
      const axis = event.key === "ArrowUp" || event.key === "ArrowDown" ? "torch_slide" : keyAxis;
      event.preventDefault();
      motion.start(axis, "jog", { direction: KEYS[event.key] > 0 ? "+" : "-" });
    });
    document.addEventListener("keyup", (event) => { if (event.key in KEYS) motion.end(); });
    // Leaving the page or losing focus stops the axis; a lost network lets its lease run out.
    window.addEventListener("blur", stopEverything);
    window.addEventListener("pagehide", stopEverything);
    document.addEventListener("visibilitychange", () => { if (document.hidden) stopEverything(); });
  });
})();
