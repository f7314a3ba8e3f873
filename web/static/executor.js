// The run page's executor line: where the job runs (local process or Slurm batch job), and for
// Slurm its job id, node and state, "stalled" when its events file stopped growing. Polls the job
// while it is queued or running. Requests go through app.js's api().
"use strict";

(function () {
  const line = document.querySelector("#execution");
  if (!line) return;
  const id = line.dataset.job;
  function describe(execution) {
    if (!execution) return "";
    if (execution.executor === "slurm") {
      const parts = ["Slurm job " + (execution.slurm_job_id || "?")];
      if (execution.slurm_node) parts.push("node " + execution.slurm_node);
      if (execution.slurm_state) parts.push(execution.slurm_state);
      if (execution.slurm_reason && execution.slurm_reason !== "None") parts.push("reason " + execution.slurm_reason);
      let text = parts.join(" · ");
      if (execution.stalled) text += " · stalled: no progress events for a while (Slurm says it runs)";
      return text;
    }
    return execution.pid ? "local process, pid " + execution.pid : "local process";
  }
  async function refresh() {
    let job;
    try { job = await api("GET", "/api/jobs/" + id); } catch (_) { return; }
    const text = describe(job.execution);
    line.textContent = text ? "Runs on: " + text : "";
    line.hidden = !text;
    line.classList.toggle("error", Boolean(job.execution && job.execution.stalled));
    await jobStatesLoaded; // app.js: the vocabulary's job states
    if (!isTerminal(job.state)) setTimeout(refresh, 3000);
  }
  window.addEventListener("DOMContentLoaded", refresh);
})();
