"""The web dashboard in headless Chromium or Firefox, driven by selenium (tests/dashboard.rs
runs it in each that is installed).

Logs in with the cluster's kubeconfig file, sees the nodes and the pods, opens the
ticker pod and sees its log lines arrive, applies a Deployment from the YAML form and
sees it become Ready, scales it, restarts it, undoes the restart and deletes it, checks
that a watch the server ends resumes from its resourceVersion (and, against a scripted
server, that the watch loop resumes from bookmarks and relists on 410), checks the browser console stayed clean, measures the
page's transferred size and first paint, and checks that a wrong token is refused and that an identity with fewer rights (VIEWER_TOKEN)
sees "Not allowed" where RBAC refuses it.
Screenshots of the main pages go to OUT_DIR. Prints "all steps passed" at the end.

Environment: DASH_URL (https://ADDRESS/ui/), KUBECONFIG, NODES (how many), HELLO_IMAGE,
PORT (the Deployment's container port), OUT_DIR, and BROWSER: `chromium` (the default,
with CHROMIUM and CHROMEDRIVER) or `firefox` (with FIREFOX and GECKODRIVER).
"""

import json
import os
import re
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["DASH_URL"]
OUT = os.environ["OUT_DIR"]
WAIT = 60


def step(msg):
    print(f"step: {msg}", flush=True)


BROWSER = os.environ.get("BROWSER", "chromium")


def browser():
    if BROWSER == "firefox":
        return firefox()
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ["CHROMIUM"]
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-gpu", "--no-first-run"]:
        options.add_argument(arg)
    # The cluster's serving certificate is signed by its own CA, which the browser
    # does not know.
    options.accept_insecure_certs = True
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=os.environ["CHROMEDRIVER"]), options=options)


def firefox():
    from selenium.webdriver.firefox.service import Service as GeckoService
    options = webdriver.FirefoxOptions()
    options.binary_location = os.environ["FIREFOX"]
    options.add_argument("-headless")
    options.add_argument("--width=1400")
    options.add_argument("--height=1000")
    options.accept_insecure_certs = True
    # geckodriver has no log endpoint: the console comes over WebDriver BiDi.
    options.enable_bidi = True
    driver = webdriver.Firefox(service=GeckoService(executable_path=os.environ["GECKODRIVER"]), options=options)
    levels = {"error": "SEVERE", "warn": "WARNING", "warning": "WARNING"}

    def keep(entry):
        _console.append({"level": levels.get(str(entry.level).lower(), "INFO"), "message": entry.text})

    driver.script.add_console_message_handler(keep)
    driver.script.add_javascript_error_handler(keep)
    return driver


def wait_for(driver, what, cond, timeout=WAIT):
    # Rows are drawn again on every watch event: an element found a moment ago can be
    # gone (stale) by the time it is read; that is "not yet", not a failure.
    wait = WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException, NoSuchElementException, IndexError))
    try:
        return wait.until(lambda d: cond(d))
    except TimeoutException as e:
        shot(driver, "failure")
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"timed out waiting for {what}\n--- page text:\n{body}\n--- console:\n{console(driver)}") from e


def shot(driver, name):
    path = os.path.join(OUT, f"{name}.png")
    driver.save_screenshot(path)
    print(f"screenshot: {path}", flush=True)


_console = []


def console(driver):
    if BROWSER != "firefox":
        _console.extend(driver.get_log("browser"))
    return _console


def css(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver, selector):
    els = css(driver, selector)
    return els[0].text if els else ""


def confirm(driver, expect, number=None):
    wait_for(driver, "the confirmation dialog", lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None)
    question = driver.find_element(By.ID, "confirm-text").text
    assert expect in question, f"the confirmation asks {question!r}, expected {expect!r}"
    if number is not None:
        box = driver.find_element(By.ID, "confirm-number")
        box.clear()
        box.send_keys(str(number))
    driver.find_element(By.ID, "confirm-ok").click()
    wait_for(driver, "the dialog to close", lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is None)


def click(driver, selector):
    """Clicks the first element `selector` finds, again if it was drawn anew meanwhile."""
    wait_for(driver, f"clicking {selector}", lambda d: css(d, selector)[0].click() or True)


def kept_points(driver, pod):
    """The usage points the API server keeps for default/POD (none if it answers no)."""
    return driver.execute_async_script("""
      const done = arguments[arguments.length - 1];
      import(new URL('api.js', location.href).href)
        .then((api) => api.get('/wharf/v1/namespaces/default/pods/' + arguments[0] + '/usage'))
        .then((kept) => done(kept.points || []), () => done([]));""", pod)


def go(driver, fragment):
    driver.execute_script("location.hash = arguments[0]", fragment)


def deployment_ready(driver, name, want):
    row = f'tr[data-kind="Deployment"][data-name="{name}"]'
    return text_of(driver, row + " td.ready") == f"{want}/{want}" and css(driver, row + " td.rollout.state-complete")


def main():
    os.makedirs(OUT, exist_ok=True)
    driver = browser()
    try:
        run(driver)
    finally:
        driver.quit()
    print("all steps passed")


def run(driver):
    step("the login page loads, and its size and first paint are measured")
    driver.get(URL)
    wait_for(driver, "the login form", lambda d: d.find_element(By.ID, "login").is_displayed())
    wait_for(driver, "the first paint", lambda d: d.execute_script(
        "return performance.getEntriesByType('paint').length > 0"))
    perf = driver.execute_script("""
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource').filter(r => r.name.includes('/ui/'));
        const paint = performance.getEntriesByType('paint');
        const fcp = paint.find(p => p.name === 'first-contentful-paint') || paint[0];
        return {
          transferred: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
          decoded: nav.decodedBodySize + res.reduce((n, r) => n + r.decodedBodySize, 0),
          files: 1 + res.length,
          firstPaintMs: Math.round(fcp.startTime),
          domContentLoadedMs: Math.round(nav.domContentLoadedEventEnd),
        };""")
    print("page: " + json.dumps(perf), flush=True)
    assert perf["files"] >= 6, f"the page loaded {perf['files']} files, expected all its modules"
    assert perf["transferred"] > 0 and perf["decoded"] > 0, perf
    shot(driver, "login")

    step("the page's own readers, in the browser: kubeconfig, YAML, rollout state, requests")
    checks = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Promise.all([import(new URL('yaml.js', location.href).href), import(new URL('views.js', location.href).href)]).then(([y, v]) => {
          const out = {};
          const kc = (user) => `apiVersion: v1
        kind: Config
        contexts:
        - context: {cluster: c, user: u}
          name: x
        current-context: x
        users:
        - name: u
          user:
        ${user}`.replace(/^        /gm, '');
          out.token = y.kubeconfigToken(kc('    token: "t0k:en" # a comment'));
          try { y.kubeconfigToken(kc('    client-certificate-data: QQ==')); } catch (e) { out.cert = e.message; }
          const docs = y.splitDocuments('a: 1\\n---\\n# only a comment\\n---\\nkind: X\\nmetadata:\\n  name: x\\ndata:\\n  f: |\\n    one\\n    two\\n  list:\\n  - {k: v}\\n  - [1, "2"]\\n');
          out.docs = docs.length;
          out.second = y.parse(docs[1]);
          const d = (status, spec = {}) => ({ metadata: { generation: 2 }, spec: { replicas: 2, ...spec }, status: { observedGeneration: 2, ...status } });
          out.rollout = [
            v.rolloutState(d({ updatedReplicas: 2, replicas: 2, availableReplicas: 2 }))[0],
            v.rolloutState(d({ updatedReplicas: 1, replicas: 2, availableReplicas: 2 }))[0],
            v.rolloutState(d({ updatedReplicas: 2, replicas: 3, availableReplicas: 2 }))[0],
            v.rolloutState({ ...d({ updatedReplicas: 2, replicas: 2, availableReplicas: 2 }), metadata: { generation: 3 } })[0],
          ];
          out.request = v.podRequest({ spec: {
            containers: [{ resources: { requests: { cpu: '100m' } } }, { resources: { limits: { cpu: '1', memory: '64Mi' } } }],
            initContainers: [{ resources: { requests: { cpu: '2' } } }],
            overhead: { cpu: '50m' } } }, 'cpu');
          out.spark = v.sparkline([0, 5, 10], 100, 10);
          done(out);
        }).catch((e) => done({ error: String(e) }));""")
    assert "error" not in checks, checks
    assert checks["token"] == "t0k:en", checks
    assert "client certificate" in checks["cert"], checks
    assert checks["docs"] == 2, checks
    assert checks["second"] == {"kind": "X", "metadata": {"name": "x"}, "data": {"f": "one\ntwo\n", "list": [{"k": "v"}, [1, "2"]]}}, checks
    assert checks["rollout"] == ["complete", "progressing", "progressing", "progressing"], checks
    assert abs(checks["request"] - 2.05) < 1e-9, checks
    assert checks["spark"] == "0.0,10.0 50.0,5.0 100.0,0.0", checks

    step("the watch loop, against a scripted server: resumes from a bookmark, relists on 410")
    # The page's own fetch is replaced for this one check by a server that answers from a
    # script, so that each turn of the loop is exercised in order: list, watch, a
    # bookmark then the stream ends (resume from the bookmark's resourceVersion), an
    # ERROR 410 event (list again), a 410 answer to the watch (list again), events.
    flow = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (async () => {
          const api = await import(new URL('api.js', location.href).href);
          const real = window.fetch;
          const calls = [];
          const obj = (name, rv) => ({ metadata: { name, namespace: 'ns', resourceVersion: rv } });
          const list = (rv, names) => JSON.stringify({ metadata: { resourceVersion: rv }, items: names.map((n) => obj(n, rv)) });
          const lines = (...events) => events.map((e) => JSON.stringify(e) + '\\n').join('');
          const stream = (text, signal, end) => new Response(new ReadableStream({ start(c) {
            c.enqueue(new TextEncoder().encode(text));
            if (end) c.close(); else signal.addEventListener('abort', () => c.error(new DOMException('aborted', 'AbortError')));
          } }), { status: 200 });
          const script = [
            () => new Response(list('5', ['a'])),
            (s) => stream(lines({ type: 'BOOKMARK', object: obj('', '7') }), s, true),
            (s) => stream(lines({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired' } }), s, true),
            () => new Response(list('20', ['b'])),
            () => new Response(JSON.stringify({ kind: 'Status', code: 410, reason: 'Expired', message: 'too old' }), { status: 410 }),
            () => new Response(list('30', ['b', 'c'])),
            (s) => stream(lines({ type: 'ADDED', object: obj('d', '31') }), s, false),
          ];
          let names = [];
          let stop = () => {};
          window.fetch = async (url, init) => {
            calls.push(String(url).replace(/^.*[?&]resourceVersion=/, 'watch@').replace(/^\\/things$/, 'list'));
            const next = script[calls.length - 1];
            if (!next) return new Promise(() => {});
            return next(init && init.signal);
          };
          try {
            stop = api.watchList('/things', (items) => { names = items.map((o) => o.metadata.name).sort(); }, (e) => calls.push('failed: ' + e));
            const deadline = Date.now() + 10000;
            while (names.join() !== 'b,c,d' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
          } finally {
            stop();
            window.fetch = real;
          }
          done({ calls, names });
        })().catch((e) => done({ error: String(e) }));""")
    assert flow.get("calls") == ["list", "watch@5", "watch@7", "list", "watch@20", "list", "watch@30"], flow
    assert flow.get("names") == ["b", "c", "d"], flow

    step("log in with the kubeconfig file")
    driver.find_element(By.ID, "kubeconfig").send_keys(os.environ["KUBECONFIG"])
    driver.find_element(By.ID, "login-button").click()
    wait_for(driver, "the logged-in user", lambda d: d.find_element(By.ID, "who").text.startswith("Logged in as "))
    assert driver.execute_script("return sessionStorage.getItem('wharf.token')"), "the token is kept in sessionStorage"

    step("the overview shows every node and the ticker pod")
    nodes = int(os.environ["NODES"])
    wait_for(driver, f"{nodes} Ready nodes", lambda d: len(css(d, '#nodes tr[data-kind="Node"] td.ok')) == nodes)
    wait_for(driver, "the ticker pod", lambda d: css(d, '#pods tr[data-kind="Pod"][data-name="ticker"]'))
    # The ticker asks for nothing but is limited to 100m and 16Mi: its node counts the
    # limits as its requests, as the scheduler does.
    ticker_node = wait_for(driver, "the ticker's node", lambda d: css(d, '#pods tr[data-name="ticker"] td')[5].text)
    wait_for(driver, "the ticker's requests on its node", lambda d: re.search(
        r"100m / .*16Mi / ", css(d, f'#nodes tr[data-name="{ticker_node}"]')[0].text, re.S))
    node_row = wait_for(driver, "a node row", lambda d: css(d, '#nodes tr[data-kind="Node"]')[0].text)
    assert re.search(r"\d+ / \d+", node_row), f"the node row shows no pod count: {node_row!r}"
    shot(driver, "overview")

    # The pod page draws the history the API server kept when it opens (sampled every
    # second in this cluster): wait until three samples are kept, so the graphs below
    # have three points whatever the pace of this machine.
    wait_for(driver, "three kept usage samples of the ticker", lambda d: len(kept_points(d, "ticker")) >= 3)

    step("the pod page follows the ticker's log as lines arrive")
    click(driver, '#pods tr[data-name="ticker"] a')
    wait_for(driver, "the pod page", lambda d: d.find_element(By.ID, "pod-name").text == "default/ticker")
    wait_for(driver, "the container's state", lambda d: "Running" in text_of(d, '#containers tr[data-name="ticker"] td.state'))

    def ticks(d):
        return [int(n) for n in re.findall(r"tick (\d+)", d.find_element(By.ID, "log").text)]

    wait_for(driver, "log lines", lambda d: ticks(d))
    first = max(ticks(driver))
    wait_for(driver, "new log lines arriving", lambda d: max(ticks(d)) >= first + 2, timeout=30)
    # The usage graphs open with the history the API server kept, not only the samples
    # taken since the page opened (one per 15 s).
    def graph_points(d):
        lines = d.find_elements(By.CSS_SELECTOR, '#usage tr[data-name="ticker"] svg.spark polyline')
        return min((len(l.get_attribute("points").split()) for l in lines), default=0)

    wait_for(driver, "usage graphs with the kept history", lambda d: graph_points(d) >= 3, timeout=10)
    shot(driver, "pod")

    step("apply a Deployment from the YAML form")
    go(driver, "#/apply")
    area = wait_for(driver, "the apply form", lambda d: d.find_element(By.ID, "apply-yaml"))
    port = os.environ["PORT"]
    yaml = f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: hello
          image: {os.environ["HELLO_IMAGE"]}
          ports:
            - containerPort: {port}
          readinessProbe:
            httpGet: {{path: /, port: {port}}}
            periodSeconds: 1
"""
    driver.execute_script("arguments[0].value = arguments[1]", area, yaml)
    shot(driver, "apply")
    driver.find_element(By.ID, "apply-button").click()
    confirm(driver, "Apply 1 object")
    wait_for(driver, "the apply result", lambda d: css(d, "#apply-results li"))
    result = text_of(driver, "#apply-results li")
    assert result == "Deployment web applied", f"apply said {result!r}"

    step("the workloads page shows it rolled out and Ready")
    go(driver, "#/workloads/default")
    wait_for(driver, "deployment web 1/1 and rolled out", lambda d: deployment_ready(d, "web", 1), timeout=120)

    step("the web pod's page graphs the requests its readiness probe makes")
    web = wait_for(driver, "the web pod", lambda d: [r.get_attribute("data-name") for r in css(d, '#ns-pods tr[data-kind="Pod"]')
                                                     if r.get_attribute("data-name").startswith("web-")][0])

    def web_rates(d):
        return [c.get("requestsPerSecond", 0) for p in kept_points(d, web) for c in p["containers"]]

    # The probe asks every second; the API server samples every second in this cluster.
    wait_for(driver, "two kept samples of the web pod with requests", lambda d: len([r for r in web_rates(d) if r > 0]) >= 2)
    click(driver, f'#ns-pods tr[data-name="{web}"] a')
    wait_for(driver, "the web pod's page", lambda d: d.find_element(By.ID, "pod-name").text == f"default/{web}")
    cell = '#usage tr[data-name="hello"] td.requests'
    wait_for(driver, "a requests graph", lambda d: css(d, cell + " svg.spark polyline"))
    shown = float(re.search(r"max ([0-9.]+)", text_of(driver, cell)).group(1))
    assert shown > 0, f"the requests graph shows no requests: {text_of(driver, cell)!r}"
    shot(driver, "pod-requests")
    go(driver, "#/workloads/default")
    wait_for(driver, "the workloads page", lambda d: css(d, 'tr[data-kind="Deployment"][data-name="web"]'))

    step("scale it to 2")
    row = 'tr[data-kind="Deployment"][data-name="web"]'
    click(driver, row + ' button[data-action="scale"]')
    confirm(driver, "how many replicas", 2)
    wait_for(driver, "deployment web 2/2 and rolled out", lambda d: deployment_ready(d, "web", 2), timeout=120)
    wait_for(driver, "two Running web pods", lambda d: len([r for r in css(d, '#ns-pods tr[data-kind="Pod"]')
                                                               if r.get_attribute("data-name").startswith("web-") and "Running" in r.text]) == 2)
    first_rs = wait_for(driver, "the ReplicaSet", lambda d: css(d, '#replicasets tr[data-kind="ReplicaSet"]')[0].get_attribute("data-name"))

    step("rollout restart makes a second revision")
    click(driver, row + ' button[data-action="restart"]')
    confirm(driver, "Restart deployment default/web")
    wait_for(driver, "a second ReplicaSet", lambda d: len(css(d, '#replicasets tr[data-kind="ReplicaSet"]')) == 2)
    wait_for(driver, "the restart rolled out", lambda d: deployment_ready(d, "web", 2), timeout=120)

    step("rollout undo goes back to the first revision's template")
    click(driver, row + ' button[data-action="undo"]')
    confirm(driver, "back to revision 1")
    # The first ReplicaSet is used again, as the newest revision (3).
    wait_for(driver, "the first ReplicaSet as revision 3",
             lambda d: [c.text for c in css(d, f'#replicasets tr[data-name="{first_rs}"] td')][1:2] == ["3"])
    wait_for(driver, "the undo rolled out", lambda d: deployment_ready(d, "web", 2), timeout=120)
    shot(driver, "workloads")

    step("delete it, after confirming, and see it go")
    click(driver, row + ' button[data-action="delete"]')
    confirm(driver, "Delete Deployment default/web")
    wait_for(driver, "deployment web gone", lambda d: not css(d, row), timeout=60)
    wait_for(driver, "its pods gone", lambda d: not [r for r in css(d, '#ns-pods tr[data-kind="Pod"]')
                                                    if r.get_attribute("data-name").startswith("web-")], timeout=60)

    step("a watch that the server ends resumes from its resourceVersion, without listing again")
    resumed = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (async () => {
          const api = await import(new URL('api.js', location.href).href);
          const deadline = Date.now() + 30000;
          const until = async (what, cond) => {
            while (!cond()) {
              if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
              await new Promise((r) => setTimeout(r, 50));
            }
          };
          const path = '/api/v1/namespaces/default/configmaps?timeoutSeconds=1';
          const calls = (watch) => performance.getEntriesByType('resource')
            .filter((e) => e.name.includes('/configmaps?timeoutSeconds=1') && e.name.includes('watch=1') === watch).length;
          let names = null;
          const failures = [];
          const stop = api.watchList(path, (items) => { names = items.map((i) => i.metadata.name); }, (e) => failures.push(String(e)));
          const create = (name) => api.request('POST', '/api/v1/namespaces/default/configmaps', {
            contentType: 'application/json', body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name } } });
          try {
            await until('the list', () => names !== null);
            await create('before-end');
            await until('before-end', () => names.includes('before-end'));
            // The first watch has ended (its entry is complete) and the next one runs.
            await until('the first watch to end', () => calls(true) >= 1);
            await create('after-end');
            await until('after-end', () => names.includes('after-end'));
            done({ lists: calls(false), watches: calls(true), failures, names });
          } finally { stop(); }
        })().catch((e) => done({ error: String(e) }));""")
    assert "error" not in resumed, resumed
    assert resumed["lists"] == 1, f"the watch listed again instead of resuming: {resumed}"
    assert not resumed["failures"], resumed

    step("the browser console has no errors")
    errors = [e for e in console(driver) if e.get("level") == "SEVERE"]
    assert not errors, "console errors:\n" + "\n".join(e["message"] for e in errors)

    step("a wrong token is refused")
    driver.find_element(By.ID, "logout").click()
    wait_for(driver, "the login form", lambda d: d.find_element(By.ID, "login").is_displayed())
    driver.find_element(By.ID, "token").send_keys("not-a-token-of-this-cluster")
    driver.find_element(By.ID, "login-button").click()
    wait_for(driver, "the refusal", lambda d: "refused" in d.find_element(By.ID, "login-error").text)
    assert driver.find_element(By.ID, "login").is_displayed()
    assert not driver.execute_script("return sessionStorage.getItem('wharf.token')"), "a refused token is not kept"
    assert not driver.find_element(By.ID, "view").is_displayed()
    shot(driver, "refused")

    step("an identity that may read pods in default only sees the rest as not allowed")
    driver.find_element(By.ID, "token").clear()
    driver.find_element(By.ID, "token").send_keys(os.environ["VIEWER_TOKEN"])
    driver.find_element(By.ID, "login-button").click()
    wait_for(driver, "the viewer logged in", lambda d: "serviceaccount:default:viewer" in d.find_element(By.ID, "who").text)
    go(driver, "#/")
    wait_for(driver, "nodes not allowed", lambda d: "Not allowed" in text_of(d, "#nodes .forbidden"))
    wait_for(driver, "pods of all namespaces not allowed", lambda d: "Not allowed" in text_of(d, "#pods .forbidden"))
    go(driver, "#/workloads/default")
    wait_for(driver, "the ticker pod in default", lambda d: css(d, '#ns-pods tr[data-kind="Pod"][data-name="ticker"]'))
    wait_for(driver, "deployments not allowed", lambda d: "Not allowed" in text_of(d, "#deployments .forbidden"))
    shot(driver, "not-allowed")
    # An action RBAC refuses says so, and changes nothing.
    go(driver, "#/pod/default/ticker")
    wait_for(driver, "the viewer's log of the ticker", lambda d: "tick " in d.find_element(By.ID, "log").text)
    click(driver, 'button[data-action="delete"]')
    confirm(driver, "Delete pod default/ticker")
    wait_for(driver, "the refusal of the delete", lambda d: d.find_element(By.ID, "notice").text.startswith(
        'Not allowed: pods "ticker" is forbidden'))
    assert "Running" in text_of(driver, "#pod-summary dd.status"), "the ticker is still running"


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
