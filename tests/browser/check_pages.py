"""Loads dashboard pages in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) and fails on any console error, page error, failed request or HTTP error response.

usage: check_pages.py BASE_URL SCREENSHOT_PATH PATH...
Prints "ok PATH" per clean page; the first PATH is screenshotted.
"""

import sys

from playwright.sync_api import sync_playwright

# Without the background-networking flags Chromium tries to reach Google's hosts, which this
# sandbox refuses; those failures are not the page's.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> int:
    base, shot, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    failures = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        for i, path in enumerate(paths):
            problems = []
            page = context.new_page()
            page.on(
                "console",
                lambda m, problems=problems: problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None,
            )
            page.on("pageerror", lambda e, problems=problems: problems.append(f"page error: {e}"))
            page.on(
                "requestfailed",
                lambda r, problems=problems: problems.append(f"request failed: {r.url} {r.failure}"),
            )
            page.on(
                "response",
                lambda r, problems=problems: problems.append(f"HTTP {r.status}: {r.url}")
                if r.status >= 400
                else None,
            )
            page.goto(base + path, wait_until="networkidle")
            # The stylesheet applied: the header is dark, not the browser default.
            bg = page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor")
            if bg != "rgb(17, 24, 39)":
                problems.append(f"stylesheet not applied (header background {bg})")
            if i == 0:
                page.screenshot(path=shot, full_page=True)
            page.close()
            if problems:
                failures.append((path, problems))
            else:
                print(f"ok {path}")
        browser.close()
    for path, problems in failures:
        print(f"FAIL {path}")
        for problem in problems:
            print(f"  {problem}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
