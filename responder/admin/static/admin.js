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
