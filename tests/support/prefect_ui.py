"""The Prefect UI driven the way an operator clicks it: Selenium with Debian's chromium and
chromedriver, headless. Nothing is downloaded: with the driver's path given, Selenium skips
Selenium Manager (its downloader), and the browser resolves no host but 127.0.0.1, so the
UI cannot reach beyond loopback.

The pages are Prefect 3.8's default UI (the one served at the server's root, "V1"):

    deployments page → a deployment → Run → Custom run → the parameters form → Submit
    → the toast's "View run" → the flow run page (state badge, tabs) → Artifacts → a card

Every step waits for what it needs on the page (never a fixed sleep) and `shot` keeps a
screenshot of where it stands.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install chromium chromium-driver (./dev setup does it when run as root)"
CHROMIUM_ARGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root on the project machines; chromium refuses its sandbox there
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # loopback only
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
)
WINDOW = (1400, 1000)
FINAL_STATES = ("Completed", "Failed", "Crashed", "Cancelled")


def browser_missing() -> str | None:
    """None when chromium, chromedriver and selenium are all here, else why not (one line)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"no {' and no '.join(missing)}: {INSTALL_HINT}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing: ./dev setup installs the test extra"
    return None


def start_chromium() -> WebDriver:
    """A headless chromium under Debian's chromedriver (the same Debian version, always)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_window_size(*WINDOW)
    return driver


class PrefectUI:
    """One browser on one Prefect UI; screenshots go to `shots` (numbered in order taken)."""

    def __init__(self, driver: WebDriver, ui_url: str, shots: Path, *, timeout: float = 30) -> None:
        self.driver = driver
        self.ui_url = ui_url.rstrip("/")
        self.shots = shots
        self.timeout = timeout
        self._taken = 0

    # -- waiting and looking ------------------------------------------------------------

    def wait(self, find, *, what: str, timeout: float | None = None) -> Any:
        """Poll `find()` (page elements may be replaced while it looks) until it returns
        something truthy; AssertionError naming `what` and the screenshot after `timeout`."""
        from selenium.common.exceptions import WebDriverException

        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                found = find()
            except WebDriverException:  # stale or not yet there: the page is still rendering
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"the UI did not show {what} (screenshot {self.shot('timed-out')})")
            time.sleep(0.25)

    def visible(self, xpath: str, *, within: WebElement | None = None) -> WebElement | None:
        from selenium.webdriver.common.by import By

        for element in (within or self.driver).find_elements(By.XPATH, xpath):
            if element.is_displayed():
                return element
        return None

    def click(self, xpath: str, *, what: str, within: WebElement | None = None) -> None:
        """Click a visible match as soon as one takes the click (see `clicked`)."""
        self.wait(lambda: self.clicked(xpath, within=within), what=what)

    def clicked(self, xpath: str, *, within: WebElement | None = None) -> bool:
        """One try at clicking a visible match that takes the click: the UI draws some toasts
        twice, one over the other, and a menu still opening covers its items for a moment."""
        from selenium.common.exceptions import ElementClickInterceptedException
        from selenium.webdriver.common.by import By

        for element in reversed((within or self.driver).find_elements(By.XPATH, xpath)):  # the last drawn is on top
            if element.is_displayed():
                try:
                    element.click()
                    return True
                except ElementClickInterceptedException:
                    continue
        return False

    def shot(self, name: str) -> Path:
        """Save a screenshot as NN-name.png, tall enough for the whole page: the UI scrolls
        inside its own panel, so the window is stretched to that panel's height meanwhile."""
        self._taken += 1
        path = self.shots / f"{self._taken:02d}-{name}.png"
        width, height = WINDOW
        tallest = self.driver.execute_script(
            "return Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
        self.driver.set_window_size(width, max(height, min(int(tallest or 0) + 150, 5000)))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(width, height)
        return path

    # -- pages ------------------------------------------------------------------------------

    def open_deployment(self, name: str) -> None:
        """The deployments page, `name` typed into its search box (other tests' deployments
        on the same server can push it to a later page), then the deployment."""
        self.driver.get(f"{self.ui_url}/deployments")
        search = self.wait(lambda: self.visible("//input[@placeholder='Search deployments...']"),
                           what="the search box of the deployments page")
        search.send_keys(name)
        self.click(f"//a[normalize-space()={_literal(name)}]", what=f"deployment {name} in the list")
        self.wait(lambda: self.visible("//button[normalize-space()='Run']"), what=f"the Run button of {name}")

    def custom_run(self) -> None:
        """Run → Custom run: the parameters form."""
        self.click("//button[normalize-space()='Run']", what="the Run button")
        self.click("//button[normalize-space()='Custom run']", what="Run's menu item Custom run")
        self.wait(lambda: self.visible("//button[normalize-space()='Submit']"), what="the custom run form")

    def field(self, label: str) -> WebElement:
        """The form's property labelled `label` (or `label (Optional)`)."""
        labels = f"normalize-space()={_literal(label)} or normalize-space()={_literal(label + ' (Optional)')}"
        return self.wait(
            lambda: self.visible(
                f"//div[contains(concat(' ', @class, ' '), ' schema-form-property ')]"
                f"[./div[@class='p-label__header']//span[contains(@class,'schema-form-property__label')][{labels}]]"
            ),
            what=f"the form field {label}",
        )

    def fill_text(self, label: str, text: str) -> None:
        """Type `text` into a string field; an optional one (str | None) is switched to str first."""
        field = self.field(label)
        switch = self.visible(".//button[normalize-space()='str']", within=field)
        if switch is not None and switch.get_attribute("aria-selected") != "true":
            switch.click()
        # the field is drawn anew once switched: look it up again
        box = self.wait(lambda: self.visible(".//fieldset//textarea | .//fieldset//input", within=self.field(label)),
                        what=f"the text box of {label}")
        box.clear()
        box.send_keys(text)

    def fill_json(self, label: str, value: dict[str, Any]) -> None:
        """Replace a JSON field's text (its code editor) with `value`, typed."""
        from selenium.webdriver.common.keys import Keys

        editor = self.wait(lambda: self.visible(".//textarea", within=self.field(label)), what=f"the editor of {label}")
        editor.send_keys(Keys.CONTROL, "a")
        editor.send_keys(Keys.DELETE)
        editor.send_keys(json.dumps(value))

    def choose(self, label: str, option: str) -> None:
        """Pick `option` in a select field."""
        from selenium.webdriver.support.select import Select

        select = self.wait(lambda: self.field(label).find_element("xpath", ".//select"), what=f"the choices of {label}")
        Select(select).select_by_visible_text(option)

    def toggle(self, label: str, on: bool) -> None:
        """Set a boolean field's switch."""
        switch = self.wait(lambda: self.visible(".//*[@role='switch']", within=self.field(label)),
                           what=f"the switch of {label}")
        if (switch.get_attribute("aria-checked") == "true") != on:
            switch.click()
        self.wait(lambda: (switch.get_attribute("aria-checked") == "true") == on, what=f"{label} switched {on}")

    def submit(self) -> str:
        """Submit the form and go to the new flow run's page, through the toast's View run
        (or, once the toast is gone, the run's name on the deployment page, where the UI
        returns after a submit); returns the run's id from the page address."""
        name = self.wait(lambda: self.visible("//div[contains(@class,'flow-run-name-input')]//input"),
                         what="the run name the form gave").get_attribute("value")
        self.click("//button[normalize-space()='Submit']", what="the Submit button")

        def run_page() -> re.Match[str] | None:
            found = re.search(r"/runs/flow-run/([0-9a-f-]{36})", self.driver.current_url)
            if found is None and not self.clicked("//button[normalize-space()='View run']"):
                self.clicked(f"//a[normalize-space()={_literal(name)}]")
            return found

        return self.wait(run_page, what=f"the page of flow run {name}")[1]

    def run_state(self) -> str | None:
        badge = self.visible("//div[contains(@class,'page-heading-flow-run__meta')]//span[contains(@class,'state-badge')]")
        return badge.text.strip() if badge is not None else None

    def wait_final_state(self, *, timeout: float) -> str:
        """Wait on the flow run page until its badge shows a final state (reloading the page
        now and then) and its logs have arrived; returns that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.wait(self.run_state, what="the flow run's state badge")
            if state in FINAL_STATES:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the run stayed {state} for {timeout:g}s (screenshot {self.shot('not-finished')})")
            time.sleep(2)
            self.driver.refresh()
        self.wait(lambda: self.visible(f"//*[not(*) and contains(., 'Finished in state {state}')]"),
                  what="the run's log line of its final state")
        return state

    def open_artifact(self, key: str) -> ArtifactView:
        """The run's Artifacts tab, then the card titled `key`: what the artifact's page shows."""
        from selenium.webdriver.common.by import By

        self.click("//li[contains(@class,'p-tab') and normalize-space()='Artifacts']", what="the Artifacts tab")
        self.click(
            f"//a[.//div[contains(@class,'artifact-card__title') and normalize-space()={_literal(key)}]]",
            what=f"the artifact card {key}",
        )
        self.wait(lambda: "/artifacts/artifact/" in self.driver.current_url, what=f"the page of artifact {key}")
        body = self.wait(lambda: (e := self.visible("//*[contains(@class,'artifact-data-markdown')]")) and e.text and e,
                         what=f"the content of artifact {key}")
        tables = []
        for table in body.find_elements(By.XPATH, ".//table"):
            heads = [h.text.strip() for h in table.find_elements(By.XPATH, ".//th")]
            rows = [[c.text.strip() for c in row.find_elements(By.XPATH, "./td")] for row in table.find_elements(By.XPATH, ".//tr")]
            tables.append([dict(zip(heads, cells)) for cells in rows if cells])
        return ArtifactView(text=body.text, tables=tables)


@dataclass(frozen=True)
class ArtifactView:
    """A markdown artifact as its page renders it: all its text, and each table's rows by heading."""

    text: str
    tables: list[list[dict[str, str]]]


def _literal(text: str) -> str:
    """`text` as an XPath string literal."""
    if "'" not in text:
        return f"'{text}'"
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


def fresh_folder(path: Path) -> Path:
    """An empty folder at `path` (what an earlier run left there is removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


__all__ = ["ArtifactView", "CHROMEDRIVER", "CHROMIUM", "PrefectUI", "browser_missing", "fresh_folder", "start_chromium"]
