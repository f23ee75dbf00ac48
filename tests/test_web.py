"""The web dashboard (`litejobs.web_app`, ``python -m litejobs web``): its
pages in a real browser (headless Chromium driven by Playwright), its JSON
API, and its defences: read-only unless told, POST actions with a CSRF token
and an Origin check, a token for anything beyond the loopback, a strict
Content-Security-Policy, and everything escaped."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import litejobs
import sample_jobs
from hostile_jobs import cli_env
from litejobs import COMPLETED, FAILED, PENDING, Job, parallel
from waiting import WAIT

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
HOW_TO_GET_A_BROWSER = ("install the distribution's chromium package and playwright "
                        "(python -m pip install -e '.[test]'); .ci/run does both")


@contextlib.contextmanager
def served(queue, **options):
    """The dashboard of ``queue`` on a free port of 127.0.0.1; its base URL."""
    server = litejobs._web_server("127.0.0.1", 0, litejobs.web_app(queue, **options))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, the distribution's, through Playwright."""
    sync_api = pytest.importorskip("playwright.sync_api", reason=HOW_TO_GET_A_BROWSER)
    if BROWSER is None:
        pytest.skip(f"no chromium on PATH: {HOW_TO_GET_A_BROWSER}")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=BROWSER,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def filled(tmp_path):
    """A queue with 120 completed jobs, a failed one, and a parallel of two
    parts with a postprocess, all run."""
    q = litejobs.Queue(tmp_path / "web.db")
    q.put_many([Job(sample_jobs.add, n, 1) for n in range(120)])
    failed = q.put(Job(sample_jobs.fail, "no <b>bold</b> here"))
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2),
                          postprocess=Job(sample_jobs.pool_sum_parts)))
    q.run_pending()
    yield q, failed, root
    q.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the test reads the redirect itself


def get(url, **headers):
    """GET ``url`` without following redirects: (status, headers, body)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=WAIT) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


# -- in a browser ------------------------------------------------------------------------


def test_the_overview_shows_the_counts_of_each_queue_and_status(filled, page):
    q, _, _ = filled
    with served(q) as url:
        page.goto(url + "/")
        cells = page.locator("table").first.locator("tr").filter(has_text="default")
        counts = cells.locator("td").all_inner_texts()
    expected = q.counts()
    assert counts[0] == "default"
    assert counts[1:7] == [str(expected[status]) for status in litejobs.STATUSES]
    assert expected[COMPLETED] == 123 and expected[FAILED] == 1


def test_the_jobs_list_filters_and_pages_through_older_jobs(filled, page):
    q, _, _ = filled
    with served(q) as url:
        page.goto(url + "/jobs")
        page.select_option("select[name=status]", "completed")
        page.click("text=filter")
        first = page.locator("td a[href^='/jobs/']").all_inner_texts()
        page.click("text=older jobs")
        second = page.locator("td a[href^='/jobs/']").all_inner_texts()
    assert len(first) == 50 and len(second) == 50
    ids = [int(text) for text in first + second]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 100
    assert all(q.get(job_id).status == COMPLETED for job_id in ids)


def test_a_failed_jobs_page_shows_its_traceback_escaped(filled, page):
    q, failed, _ = filled
    with served(q) as url:
        page.goto(f"{url}/jobs/{failed.id}")
        error = page.locator("pre").inner_text()
        bold = page.locator("pre b").count()
    assert "Traceback (most recent call last)" in error
    assert "ValueError: no <b>bold</b> here" in error  # shown as text, not as markup
    assert bold == 0


def test_a_job_retried_shows_the_traceback_of_every_attempt(tmp_path, page):
    q = litejobs.Queue(tmp_path / "retries.db")
    flaky = q.put(Job(sample_jobs.flaky, 2, "ConnectionError"), retry=litejobs.Retry(3, delay=0))
    q.run_pending()
    assert flaky.refresh().status == COMPLETED and flaky.attempts == 3
    with served(q) as url:
        page.goto(f"{url}/jobs/{flaky.id}")
        summaries = page.locator("details summary")
        assert summaries.count() == 2  # the two attempts that failed
        summaries.first.click()
        first = page.locator("details pre").first.inner_text()
    q.close()
    assert "Traceback (most recent call last)" in first and "ConnectionError" in first


def test_retry_from_the_page_puts_the_job_back_in_the_database(filled, page):
    q, failed, _ = filled
    with served(q, allow_actions=True) as url:
        page.goto(f"{url}/jobs/{failed.id}")
        with page.expect_navigation():
            page.click("button[value=retry]")
        shown = page.locator("h1").inner_text()
    assert failed.refresh().status == PENDING and "pending" in shown


def test_a_composites_tree_shows_its_parts_and_postprocess(filled, page):
    q, _, root = filled
    part = root.children()[0]
    with served(q) as url:
        page.goto(f"{url}/jobs/{part.id}")
        items = page.locator("ul.tree li").all_inner_texts()
    tree = items[0]
    assert f"job {root.id} completed sample_jobs:pool_sum_parts (parallel)" in tree
    for child in root.children():
        assert f"job {child.id} completed sample_jobs:add part" in tree
    assert items[1:] == [line for line in tree.splitlines()[1:]]  # the parts, under the root


def test_a_bulk_action_on_everything_matching_asks_first_then_acts(filled, page):
    q, _, _ = filled
    more = [q.put(Job(sample_jobs.fail, f"again {n}")) for n in range(3)]
    q.run_pending()
    failed = [job.id for job in q.jobs(status=FAILED, limit=None)]
    assert len(failed) == 4
    with served(q, allow_actions=True) as url:
        page.goto(url + "/jobs?status=failed")
        with page.expect_navigation():
            page.click("button:text('purge all')")
        question = page.locator("h1").inner_text()
        assert q.counts()[FAILED] == 4  # nothing done yet
        with page.expect_navigation():
            page.click("text=yes, purge them")
    assert question == "purge 4 jobs?"
    assert q.counts()[FAILED] == 0 and q.counts()[COMPLETED] == 123
    assert all(job.id in failed for job in more)


def test_a_queue_paused_from_the_overview_is_paused_in_the_database(filled, page):
    q, _, _ = filled
    with served(q, allow_actions=True) as url:
        page.goto(url + "/")
        with page.expect_navigation():
            page.click("button[value=pause-queue]")
        assert list(q.paused()) == ["default"]
        with page.expect_navigation():
            page.click("button[value=resume-queue]")
    assert q.paused() == {}


# -- the defences ------------------------------------------------------------------------


def test_an_action_without_the_csrf_token_or_from_another_site_is_refused(filled):
    q, failed, _ = filled
    with served(q, allow_actions=True) as url:
        status, headers, _ = get(url + "/jobs")
        session = headers["Set-Cookie"].split(";")[0]
        body = f"action=retry&id={failed.id}".encode()
        for extra in ({}, {"Origin": "https://evil.example"}):
            request = urllib.request.Request(url + "/actions", data=body, headers={
                "Cookie": session, **extra})
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=WAIT)
            assert refused.value.code == 403
    assert failed.refresh().status == FAILED


def test_a_read_only_dashboard_refuses_every_action(filled):
    q, failed, _ = filled
    with served(q) as url:
        request = urllib.request.Request(url + "/actions", data=b"action=retry&id=1")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=WAIT)
    assert refused.value.code == 403 and "read-only" in refused.value.read().decode()
    assert failed.refresh().status == FAILED


def test_with_a_token_every_request_must_carry_it(filled):
    q, _, _ = filled
    with served(q, token="s3cret-token") as url:
        status, headers, _ = get(url + "/api/overview")
        assert status == 303 and headers["Location"] == "/login"
        status, _, body = get(url + "/api/overview", Authorization="Bearer wrong")
        assert status == 303
        status, _, body = get(url + "/api/overview", Authorization="Bearer s3cret-token")
        assert status == 200 and json.loads(body)["totals"][COMPLETED] == 123


def test_a_bind_beyond_the_loopback_without_a_token_is_refused(filled):
    q, _, _ = filled
    done = subprocess.run([sys.executable, "-m", "litejobs", "web", q.path, "--host", "0.0.0.0"],
                          capture_output=True, text=True, env=cli_env(), timeout=WAIT)
    assert done.returncode == 2 and "without a token" in done.stderr


def test_the_redact_hook_sees_each_jobs_json_before_it_is_shown(filled):
    q, failed, _ = filled

    def redact(shown):
        return {**shown, "call": "sample_jobs:fail(<redacted>)", "error": "(redacted)"}

    with served(q, redact=redact) as url:
        _, _, page = get(f"{url}/jobs/{failed.id}")
        _, _, api = get(f"{url}/api/jobs/{failed.id}")
    assert "no &lt;b&gt;bold" not in page and "(redacted)" in page
    assert "&lt;redacted&gt;" in page
    assert json.loads(api)["error"] == "(redacted)"


def test_the_time_filters_keep_the_jobs_put_in_the_window(filled):
    q, _, _ = filled
    with served(q) as url:
        _, _, recent = get(url + "/api/jobs?since=1h")
        _, _, older = get(url + "/api/jobs?before=1h")
    assert len(json.loads(recent)) == 50 and json.loads(older) == []


def test_bad_filters_and_unknown_pages_get_an_answer_not_a_crash(filled):
    q, _, _ = filled
    with served(q) as url:
        assert get(url + "/jobs?since=yesterday-ish")[0] == 400
        assert get(url + "/jobs?status=finished")[0] == 400
        assert get(url + "/jobs/12x")[0] == 404 and get(url + "/nowhere")[0] == 404
        status, _, body = get(url + "/jobs?name=<script>alert(1)</script>")
    assert status == 200 and "<script>alert" not in body and "&lt;script&gt;" in body


def test_pages_carry_a_strict_policy_and_the_api_matches_the_cli(filled):
    q, _, root = filled
    with served(q) as url:
        _, headers, _ = get(url + "/")
        _, _, api = get(url + "/api/overview")
        _, _, shown = get(f"{url}/api/jobs/{root.id}")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    cli = subprocess.run([sys.executable, "-m", "litejobs", "status", q.path, "--json"],
                         capture_output=True, text=True, env=cli_env(), timeout=WAIT)
    assert json.loads(api)["counts"] == json.loads(cli.stdout)["counts"]
    assert [child["id"] for child in json.loads(shown)["tree"]["children"]] == [
        child.id for child in root.children()]


def test_each_page_renders_in_the_browser_in_a_small_screenshot(filled, page, tmp_path):
    """Screenshots of every page; with LITEJOBS_SCREENSHOTS set to a folder,
    they are written there too (docs/screenshots, shown in the README)."""
    import os

    q, failed, root = filled
    q.schedule("nightly-digest", "30 2 * * *", Job(sample_jobs.my_tick), tz="Europe/Berlin")
    q.set_quota("customer:*", 1)
    q.pause("io")
    pages = {"overview": "/", "jobs": "/jobs", "failed-job": f"/jobs/{failed.id}",
             "composite": f"/jobs/{root.children()[0].id}", "pools": "/pools",
             "schedules": "/schedules"}
    keep = os.environ.get("LITEJOBS_SCREENSHOTS")
    page.set_viewport_size({"width": 1000, "height": 640})
    with q.worker(processes=1), served(q, allow_actions=True) as url:
        for name, path in pages.items():
            response = page.goto(url + path)
            assert response.status == 200, path
            assert page.locator("nav a.here").count() == 1
            shot = page.screenshot(path=str(tmp_path / f"{name}.png"))
            assert 5_000 < len(shot) < 200_000, (name, len(shot))
            if keep:
                (Path(keep) / f"{name}.png").write_bytes(shot)


def test_every_page_and_the_api_serve_a_queue_on_each_backend(each_backend):
    q = each_backend
    failed = q.put(Job(sample_jobs.fail, "broken"))
    root = q.put(parallel(Job(sample_jobs.add, 1, 1), Job(sample_jobs.add, 2, 2)))
    q.run_pending()
    q.schedule("hourly", "0 * * * *", Job(sample_jobs.my_tick))
    q.set_quota("pdf", 2)
    with served(q, allow_actions=True) as url:
        for path in ("/", "/jobs", "/jobs?status=failed", f"/jobs/{root.id}", "/pools",
                     "/schedules"):
            assert get(url + path)[0] == 200, path
        _, _, overview = get(url + "/api/overview")
        _, _, failures = get(url + "/api/jobs?status=failed")
        _, _, shown = get(f"{url}/api/jobs/{failed.id}")
        _, _, schedules = get(url + "/api/schedules")
    assert json.loads(overview)["totals"][FAILED] == 1
    assert [job["id"] for job in json.loads(failures)] == [failed.id]
    assert "ValueError: broken" in json.loads(shown)["error"]
    assert [s["name"] for s in json.loads(schedules)["schedules"]] == ["hourly"]
    assert json.loads(schedules)["quotas"]["limits"] == [
        {"pattern": "pdf", "running": 2, "rate": None, "per": None}]
