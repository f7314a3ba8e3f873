// Time left of a running job, next to its progress bar: the rate since the first progress seen
// (training steps, inference stages), from the events' own timestamps, applied to what is left.
"use strict";

function formatEta(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
}

class Eta {
  constructor(bar) {
    this.first = null;
    this.el = document.createElement("p");
    this.el.id = "eta";
    this.el.className = "note";
    this.el.hidden = true; // shown once there is a time to tell, gone when the job has ended
    bar.insertAdjacentElement("afterend", this.el);
  }

  hide() { this.el.textContent = ""; this.el.dataset.seconds = "0"; this.el.hidden = true; }

  // fraction in 0..1; time in seconds (an event's `time`, else now).
  update(fraction, time) {
    const t = typeof time === "number" ? time : Date.now() / 1000;
    if (fraction >= 1) { this.hide(); return; }
    if (!this.first || fraction < this.first.fraction) { this.first = { fraction, t }; return; }
    const rate = (fraction - this.first.fraction) / (t - this.first.t);
    if (!(rate > 0) || !isFinite(rate)) return;
    const left = (1 - fraction) / rate;
    this.el.dataset.seconds = String(Math.round(left));
    this.el.textContent = `About ${formatEta(left)} left (${(100 * fraction).toFixed(0)} % done)`;
    this.el.hidden = false;
  }
}

window.progressEta = (() => {
  const bar = document.querySelector("#progress");
  return bar ? new Eta(bar) : null;
})();
