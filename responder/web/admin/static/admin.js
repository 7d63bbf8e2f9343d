// Small progressive enhancements for the admin UI; every page works without them.

// Forms with data-confirm ask before they submit (e.g. revoking a token).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

// An import's page follows its progress until it finishes, then reloads to show the report.
async function followImport(section) {
  const url = section.dataset.progressUrl;
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const job = await response.json();
    document.getElementById("import-progress").value = job.progress;
    document.getElementById("import-state").textContent = job.state;
    document.getElementById("import-rows").textContent = job.rows_read;
    document.getElementById("import-imported").textContent = job.imported;
    document.getElementById("import-rejected").textContent = job.rejected;
    if (job.state !== "running") {
      window.location.reload();
      return;
    }
  }
}

const importJob = document.getElementById("import-job");
if (importJob && importJob.dataset.state === "running") followImport(importJob);

// A newsletter's page follows its progress (sent, queued, total) while it is being sent.
async function followNewsletter(section) {
  const url = section.dataset.progressUrl;
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const news = await response.json();
    const done = news.sent + news.failed;
    const bar = document.getElementById("nl-progress");
    bar.max = news.total || 1;
    bar.value = news.total ? done : 0;
    document.getElementById("nl-pct").textContent = `${news.total ? Math.round((done / news.total) * 100) : 0}%`;
    document.getElementById("nl-state").textContent = news.state;
    document.getElementById("nl-sent").textContent = news.sent;
    document.getElementById("nl-queued").textContent = news.queued;
    document.getElementById("nl-failed").textContent = news.failed;
    document.getElementById("nl-total").textContent = news.total;
    if (!["scheduled", "sending"].includes(news.state) && done >= news.queued) {
      if (news.state !== section.dataset.state) window.location.reload();  // show the right buttons
      return;
    }
  }
}

const newsletter = document.getElementById("newsletter");
if (newsletter && (["scheduled", "sending"].includes(newsletter.dataset.state) || newsletter.dataset.pending !== "0")) {
  followNewsletter(newsletter);
}
