"""The Prefect UI in a real browser (Debian's chromium, headless, through Selenium), on the
session's Prefect server. Screenshots are kept in test-artifacts/browser/TEST/ at the top of
the checkout (git ignores it), one folder per test, emptied when the test starts again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.prefect_ui import PrefectUI, browser_missing, fresh_folder, start_chromium
from tests.support.serve import ROOT, ferry_serve, serve_env  # noqa: F401 - fixtures

ARTIFACTS = ROOT / "test-artifacts" / "browser"


@pytest.fixture
def prefect_ui(prefect_server, request: pytest.FixtureRequest) -> Iterator[PrefectUI]:
    """A browser on the session server's UI; skipped, with the reason, where chromium,
    chromedriver or selenium is missing (./dev setup installs them)."""
    reason = browser_missing()
    if reason is not None:
        pytest.skip(reason)
    shots = fresh_folder(ARTIFACTS / request.node.name)
    print(f"screenshots: {shots}")
    driver = start_chromium()
    try:
        yield PrefectUI(driver, prefect_server.ui_url, shots)
    finally:
        driver.quit()
