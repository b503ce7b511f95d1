// podfn dashboard: live updates by polling our own JSON, confirmations, copy buttons.
// No framework and no build step; every request goes to this server.
"use strict";

const POLL_MS = 1000;

async function getJSON(url) {
  const response = await fetch(url, {headers: {"Accept": "application/json"},
                                     credentials: "same-origin"});
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function pollCalls(table) {
  const tick = async () => {
    try {
      const data = await getJSON(table.dataset.live);
      table.querySelector("tbody").innerHTML = data.html;
    } catch (err) { console.warn(err); }
    setTimeout(tick, POLL_MS * 2);
  };
  setTimeout(tick, POLL_MS * 2);
}

function pollCall(box) {
  const tick = async () => {
    try {
      const data = await getJSON(box.dataset.live);
      const state = document.getElementById("state");
      state.textContent = data.state;
      state.className = "state-" + data.state;
      document.getElementById("reason").textContent = data.reason || "";
      document.getElementById("stdout").textContent = data.stdout;
      document.getElementById("stderr").textContent = data.stderr;
      document.getElementById("attempts").innerHTML = data.attempts;
      if (data.final) {
        const cancel = document.getElementById("cancel-form");
        if (cancel) cancel.remove();
        // Reload once so the result, traceback and final facts render server-side.
        if (box.dataset.final !== "true") { window.location.reload(); }
        return;
      }
    } catch (err) { console.warn(err); }
    setTimeout(tick, POLL_MS);
  };
  if (box.dataset.final !== "true") setTimeout(tick, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("calls");
  if (table && table.dataset.live) pollCalls(table);
  const box = document.getElementById("call");
  if (box) pollCall(box);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).textContent;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (err) {  // no clipboard outside secure contexts: select it instead
        const range = document.createRange();
        range.selectNodeContents(document.getElementById(button.dataset.copy));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  }
});
