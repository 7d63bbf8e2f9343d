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

// Compose: the form learns the admin's time zone (times are typed in it, stored as UTC), and
// says how many the chosen layers and tags reach as they change.
const compose = document.getElementById("compose-form");
if (compose) {
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  if (!compose.elements.tz.value || compose.elements.tz.value === "UTC") compose.elements.tz.value = zone;
  document.getElementById("n-tz-name").textContent = compose.elements.tz.value;
  const audience = document.getElementById("n-audience");
  let asked = 0;
  const count = async () => {
    const query = new URLSearchParams();
    for (const box of compose.querySelectorAll("input[name=layers]:checked")) query.append("layers", box.value);
    query.set("tags", compose.elements.tags.value);
    if (!query.has("layers")) {
      audience.textContent = "Choose at least one layer.";
      return;
    }
    const mine = ++asked;
    const response = await fetch(`/admin/newsletters/audience.json?${query}`, { headers: { Accept: "application/json" } });
    if (!response.ok || mine !== asked) return;
    const answer = await response.json();
    audience.textContent =
      answer.count === null ? answer.message : `Reaches ${answer.count.toLocaleString()} active subscriber${answer.count === 1 ? "" : "s"} now.`;
  };
  compose.addEventListener("change", count);
  compose.elements.tags.addEventListener("input", count);
  count();
}

// Times stored in UTC are shown in the reader's own time zone where the page marks them.
for (const time of document.querySelectorAll("time[datetime]")) {
  const at = new Date(time.getAttribute("datetime"));
  if (!Number.isNaN(at.getTime())) {
    time.textContent = at.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
    time.title = `${time.getAttribute("datetime")} (UTC)`;
  }
}

// The step editor's preview link follows the chosen template.
const stepTemplate = document.getElementById("s-template");
const stepPreview = document.getElementById("s-preview");
if (stepTemplate && stepPreview) {
  stepTemplate.addEventListener("change", () => {
    stepPreview.href = `/admin/templates/${encodeURIComponent(stepTemplate.value)}`;
  });
}

// A layer's rule: the sentence summing it up follows its form (or its JSON) as they change. The
// server words it (POST …/rule/words, core/rule_words.py), so page and sentence never disagree;
// the words form also refreshes the JSON shown to experts.
const ruleSentence = document.getElementById("rule-sentence");
for (const form of document.querySelectorAll("form[data-words-url]")) {
  let asked = 0;
  let timer;
  const word = async () => {
    const mine = ++asked;
    const response = await fetch(form.dataset.wordsUrl, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      headers: { Accept: "application/json" },
    });
    if (!response.ok || mine !== asked) return;
    const answer = await response.json();
    ruleSentence.classList.toggle("invalid", Boolean(answer.error));
    ruleSentence.textContent = answer.error ? `Not a rule yet: ${answer.error}` : answer.sentence;
    if (answer.json && form.id === "rule-form") document.getElementById("rule-json").value = answer.json;
  };
  const soon = () => {
    clearTimeout(timer);
    timer = setTimeout(word, 150);
  };
  form.addEventListener("input", soon);
  form.addEventListener("change", soon);
}
