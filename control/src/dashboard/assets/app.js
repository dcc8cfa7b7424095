// The dashboard's entry: login (a pasted token or a kubeconfig's token, checked with a
// SelfSubjectReview before it is kept in sessionStorage) and the hash router that shows
// one page at a time, stopping the previous page's watches.

import * as api from "./api.js";
import { kubeconfigToken } from "./yaml.js";
import * as views from "./views.js";

const $ = (id) => document.getElementById(id);
let stopPage = () => {};

function showLogin(message) {
  stopPage();
  stopPage = () => {};
  $("view").hidden = true;
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

async function login(token) {
  token = token.trim();
  if (!token) throw new Error("Paste a token or choose a kubeconfig file.");
  let user;
  try {
    user = await api.whoAmI(token);
  } catch (err) {
    if (err.status === 401) throw new Error("The token was refused: the cluster does not know it (401 Unauthorized).");
    throw new Error("Could not check the token: " + err.message);
  }
  api.setToken(token);
  return user;
}

function showUser(user) {
  $("who").textContent = user.username ? "Logged in as " + user.username : "";
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  $("view").hidden = false;
}

function route() {
  stopPage();
  stopPage = () => {};
  if (!api.token()) { showLogin(); return; }
  $("notice").textContent = "";
  $("notice").className = "notice";
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const view = $("view");
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("current", a.getAttribute("href").slice(2).split("/")[0] === parts[0]);
  switch (parts[0]) {
    case "workloads": stopPage = views.workloads(view, parts[1]); break;
    case "pod": stopPage = views.pod(view, parts[1], parts[2]); break;
    case "apply": stopPage = views.apply(view); break;
    default: stopPage = views.overview(view);
  }
}

async function start() {
  api.whenUnauthorized(() => {
    api.clearToken();
    showLogin("Your token is no longer accepted: log in again.");
  });
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = $("login-button");
    button.disabled = true;
    $("login-error").textContent = "";
    try {
      let token = $("token").value;
      const file = $("kubeconfig").files[0];
      if (!token.trim() && file) token = kubeconfigToken(await file.text());
      showUser(await login(token));
      $("token").value = "";
      $("kubeconfig").value = "";
      route();
    } catch (err) {
      $("login-error").textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });
  $("logout").addEventListener("click", () => { api.clearToken(); showLogin("Logged out."); });
  window.addEventListener("hashchange", route);
  const saved = api.token();
  if (!saved) { showLogin(); return; }
  try {
    showUser(await api.whoAmI(saved));
    route();
  } catch (err) {
    api.clearToken();
    showLogin(err.status === 401 ? "Your token is no longer accepted: log in again." : err.message);
  }
}

start();
