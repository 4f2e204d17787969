"""The web playground at ``/``, in Debian's Chromium driven by Playwright, against a real
``openfal serve`` with keys on, a tiny FLUX, the TTS app and two test apps (media inputs,
slow work).

One server and one browser serve the whole module. With ``OPENFAL_SCREENSHOTS=docs/screenshots``
the tests also save screenshots of the main pages there (1000 px wide, palette PNGs).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openfal.testing import ServerProcess

from conftest import APPS, wait_for

pytest.importorskip("diffusers")
pytest.importorskip("espeakng_loader")
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, Playwright, expect, sync_playwright

from openfal.models.tiny import make_tiny

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AXE = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
SHOTS = os.environ.get("OPENFAL_SCREENSHOTS")
WIDE = {"width": 1000, "height": 760}
PHONE = {"width": 390, "height": 844}
FLUX_INPUT = {"prompt": "a red fox", "image_size": {"width": 64, "height": 64},
              "num_inference_steps": 1, "seed": 7}
RUN_TIMEOUT = 120_000  # ms: the first FLUX run starts its runner (torch, diffusers) on CPU

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                "(.ci/run installs Debian's chromium package)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("playground")
    make_tiny("flux", data_dir / "models" / "black-forest-labs" / "FLUX.1-schnell")
    args = ["--app", f"{APPS}::Media", "--app", f"{APPS}::Work",
            "--allow-network", "127.0.0.0/8"]
    with ServerProcess(data_dir, args) as srv:
        threading.Thread(target=_warm_up, args=(srv,), daemon=True).start()
        yield srv


def _warm_up(server: ServerProcess) -> None:
    """Start the runners while the first tests look at pages: the FLUX one takes a while."""
    headers = {"authorization": f"Key {server.admin_key}"}
    with server.client(headers=headers) as client:
        client.post("/queue/fal-ai/flux/schnell", json=FLUX_INPUT)
        client.post("/queue/openfal/tts", json={"text": "warm"})
        client.post("/queue/openfal/media", json={})


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync",
              "--autoplay-policy=no-user-gesture-required"])
    yield browser
    browser.close()


def new_page(browser: Browser, server: ServerProcess, key: str | None,
             viewport: dict[str, int] = WIDE) -> Page:
    """A page in a fresh context; ``key`` is put in its local storage, as the dialog does.
    CSP is bypassed for the test's own scripts (axe, wait_for_function)."""
    context = browser.new_context(viewport=viewport, base_url=server.url, bypass_csp=True)
    if key is not None:
        context.add_init_script(f"localStorage.setItem('openfal.key', {json.dumps(key)})")
    return context.new_page()


@pytest.fixture
def page(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    """A page with the ADMIN key set; no uncaught error may happen in it."""
    page = new_page(browser, server, server.admin_key)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.context.close()
    assert errors == [], "uncaught errors in the page"


def screenshot(page: Page, name: str) -> None:
    if not SHOTS:
        return
    folder = Path(SHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    image = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(
        folder / f"{name}.png", optimize=True)


def open_endpoint(page: Page, endpoint_id: str) -> None:
    page.goto(f"/#/models/{endpoint_id}")
    expect(page.get_by_role("button", name="Run")).to_be_visible()


def field(page: Page, name: str) -> Locator:
    return page.locator(f'.field[data-field="{name}"]').first


def run_flux(page: Page) -> None:
    open_endpoint(page, "fal-ai/flux/schnell")
    page.get_by_label("Prompt").fill(FLUX_INPUT["prompt"])
    page.get_by_label("Image Size").select_option("custom")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Num Inference Steps", exact=True).fill("1")
    page.get_by_label("Seed").fill("7")
    page.get_by_role("button", name="Run").click()
    expect(page.locator(".image-grid img")).to_be_visible(timeout=RUN_TIMEOUT)


# The key, the gallery


def test_key_entered_once_then_the_gallery(browser: Browser, server: ServerProcess) -> None:
    page = new_page(browser, server, key=None)
    page.goto("/")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    page.get_by_label("Key (id:secret)").fill(server.admin_key)
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator(".cards li").first).to_be_visible()
    assert page.evaluate("localStorage.getItem('openfal.key')") == server.admin_key
    expect(page.get_by_role("link", name="Keys")).to_be_visible()  # an ADMIN key

    page.reload()  # kept: no dialog again
    expect(page.locator(".cards li").first).to_be_visible()
    expect(dialog).to_be_hidden()
    total = page.locator(".cards li").count()
    assert total >= 40
    screenshot(page, "gallery")

    page.get_by_label("Search").fill("tts")
    expect(page.locator(".cards li")).to_have_count(1)
    expect(page.locator(".cards li")).to_contain_text("openfal/tts")
    page.get_by_label("Search").fill("")
    page.get_by_role("button", name="text-to-image").click()
    categories = page.locator(".cards .badge:not(.run)").all_text_contents()
    assert categories and set(categories) == {"text-to-image"}
    assert "category=text-to-image" in page.url
    page.locator('a.card[href="#/models/fal-ai/flux/schnell"]').click()
    expect(page.locator("h1")).to_have_text("flux/schnell")
    page.context.close()


# Runs


def test_tts_audio_plays(page: Page) -> None:
    open_endpoint(page, "openfal/tts")
    page.get_by_label("Text").fill("hello from the playground")
    page.get_by_role("button", name="Run").click()
    audio = page.locator("audio")
    expect(audio).to_be_visible(timeout=RUN_TIMEOUT)
    audio.evaluate("audio => audio.play()")
    page.wait_for_function("document.querySelector('audio').currentTime > 0.2")
    assert audio.evaluate("audio => audio.duration") > 0.5


def test_bad_input_shows_the_fields_error(page: Page) -> None:
    open_endpoint(page, "openfal/tts")
    page.get_by_label("Text").fill("hi")
    page.get_by_label("Speed", exact=True).fill("5")  # the slider stops at 2; the box does not
    page.get_by_role("button", name="Run").click()
    error = field(page, "speed").locator(".field-error")
    expect(error).to_contain_text("less than or equal to 2")
    expect(page.get_by_label("Speed", exact=True)).to_have_attribute("aria-invalid", "true")

    # A field error found by the app itself (a 422 result) lands on its field too.
    page.get_by_label("Speed", exact=True).fill("1")
    page.get_by_label("Voice").fill("klingon")
    page.get_by_role("button", name="Run").click()
    expect(field(page, "voice").locator(".field-error")).to_contain_text("unknown voice",
                                                                         timeout=RUN_TIMEOUT)
    expect(field(page, "speed").locator(".field-error")).to_be_hidden()


def test_file_field_uploads_through_storage(page: Page, server: ServerProcess) -> None:
    png = io.BytesIO()
    Image.new("RGB", (3, 2), "red").save(png, "PNG")
    open_endpoint(page, "openfal/media")
    page.get_by_label("Upload a file for Image Url").set_input_files(
        {"name": "red.png", "mimeType": "image/png", "buffer": png.getvalue()})
    expect(field(page, "image_url").locator(".upload-status")).to_have_text("Uploaded red.png")
    url = page.get_by_label("Image Url", exact=True).input_value()
    assert url.startswith(f"{server.url}/files/") and url.endswith("/red.png")
    assert httpx.get(url).content == png.getvalue()
    page.get_by_role("button", name="Run").click()
    output = page.get_by_label("Output JSON")
    expect(output).to_be_visible(timeout=RUN_TIMEOUT)
    assert json.loads(output.text_content())["image_url"]["size"] == [3, 2]


# Every endpoint's form, phone width, the keyboard, axe


def test_every_endpoint_gets_a_form(page: Page) -> None:
    page.goto("/")
    expect(page.locator(".cards li").first).to_be_visible()
    failures = page.evaluate("""async () => {
        const api = await import("/_playground/js/api.js");
        const {buildForm} = await import("/_playground/js/form.js");
        const failures = [];
        for (const model of await api.listModels()) {
            try {
                const form = buildForm(await api.endpointDocument(model.endpoint_id),
                                       model.endpoint_id);
                form.write(form.read());
                JSON.stringify(form.read());
            } catch (error) {
                failures.push(`${model.endpoint_id}: ${error}`);
            }
        }
        return failures;
    }""")
    assert failures == []


PAGES = ["/#/", "/#/models/fal-ai/flux-kontext-lora", "/#/models/fal-ai/flux/schnell",
         "/#/history", "/#/keys", "/#/usage"]


def loaded(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("h1")).to_be_visible()
    expect(page.locator(".loading")).to_have_count(0)


def test_phone_width_has_no_horizontal_scroll(browser: Browser, server: ServerProcess) -> None:
    page = new_page(browser, server, server.admin_key, viewport=PHONE)
    for url in PAGES:
        loaded(page, url)
        if "kontext" in url:
            page.get_by_role("button", name="Add lora").click()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{url} is {width} px wide"
        if "schnell" in url:
            screenshot(page, "phone")
    page.context.close()


def test_every_control_is_reachable_with_tab(page: Page) -> None:
    for url in PAGES:
        loaded(page, url)
        if "kontext" in url:
            page.get_by_role("button", name="Add lora").click()
        page.evaluate("""() => document.addEventListener("focusin",
            (event) => { event.target.dataset.tabbed = "yes"; })""")
        controls = page.evaluate("""() => [...document.querySelectorAll(
            'a[href], button, input, select, textarea, summary, [tabindex="0"]')]
            .filter((node) => !node.disabled && node.checkVisibility()).length""")
        page.evaluate("document.activeElement.blur()")
        for _ in range(controls + 2):
            page.keyboard.press("Tab")
        missed = page.evaluate("""() => [...document.querySelectorAll(
            'a[href], button, input, select, textarea, summary, [tabindex="0"]')]
            .filter((node) => !node.disabled && node.checkVisibility() && !node.dataset.tabbed)
            .map((node) => node.outerHTML.slice(0, 120))""")
        assert missed == [], f"{url}: not reached with Tab"


def serious_violations(page: Page) -> list[str]:
    """What axe-core finds in the page as it is, serious or critical."""
    assert AXE.exists(), "axe-core is missing: npm ci --prefix tests/js (scripts/test runs it)"
    page.evaluate(AXE.read_text())
    return page.evaluate("""async () => (await axe.run(document)).violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => `${v.id}: ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)""")


def test_axe_finds_no_serious_violations(page: Page) -> None:
    for url in PAGES:
        loaded(page, url)
        assert serious_violations(page) == [], url


# The runs that wait for FLUX, last: its runner starts meanwhile.


def test_flux_run_shows_logs_image_and_code(page: Page, server: ServerProcess) -> None:
    run_flux(page)
    expect(page.locator(".run-status")).to_contain_text("Completed")
    assert page.locator(".logs").text_content().strip()
    image = page.locator(".image-grid img")
    wait_for(lambda: image.evaluate("img => img.complete && img.naturalWidth") == 64,
             what="the image loaded")
    download = page.get_by_role("link", name="Download")
    assert download.get_attribute("href").startswith(f"{server.url}/files/")
    output = json.loads(page.get_by_label("Output JSON").text_content())
    assert output["images"][0]["width"] == 64
    screenshot(page, "endpoint")
    assert serious_violations(page) == []

    snippets = {}
    for language in ("cURL", "Python", "JavaScript"):
        page.locator(".snippets").get_by_role("button", name=language).click()
        snippets[language] = page.locator(".snippets code").text_content()
    curl_body = re.search(r"-d '(.*)'", snippets["cURL"]).group(1)
    assert json.loads(curl_body) == FLUX_INPUT
    assert f"{server.url}/queue/fal-ai/flux/schnell" in snippets["cURL"]
    assert 'os.environ.get("FAL_RUN_HOST")' in snippets["Python"]
    assert '"num_inference_steps": 1' in snippets["Python"]
    assert f'proxyUrl: {{ url: "{server.url}/api/fal/proxy", when: "always" }}' in snippets[
        "JavaScript"]
    secret = server.admin_key.split(":")[1]
    for text in snippets.values():
        assert secret not in text
        assert not re.search(r"fal\.(run|ai)|falrun", text), "a snippet names the hosted platform"


# History


def test_history_open_rerun_and_cancel(page: Page) -> None:
    run_flux(page)
    page.goto("/#/history?endpoint_id=fal-ai/flux/schnell&status=COMPLETED")
    rows = page.locator("table.requests tbody tr")
    expect(rows.first).to_be_visible()
    before = rows.count()
    assert set(page.locator("table.requests tbody td:nth-child(2)").all_text_contents()) == {
        "fal-ai/flux/schnell"}
    rows.first.get_by_role("button", name=re.compile("Open request")).click()
    detail = page.locator(".request-detail")
    expect(detail.locator(".image-grid img")).to_be_visible()
    assert json.loads(detail.get_by_label("Input JSON").text_content()) == FLUX_INPUT
    screenshot(page, "history")
    assert serious_violations(page) == []

    detail.get_by_role("button", name="Re-run").click()
    expect(page.locator(".run-status")).to_contain_text("Completed", timeout=RUN_TIMEOUT)
    expect(page.locator(".image-grid img")).to_be_visible()
    expect(page.get_by_label("Seed")).to_have_value("7")
    page.goto("/#/history?endpoint_id=fal-ai/flux/schnell&status=COMPLETED")
    expect(rows).to_have_count(before + 1)

    # A running request, cancelled from the history.
    open_endpoint(page, "openfal/work")
    page.get_by_label("Seconds").fill("15")
    page.get_by_label("Steps").fill("15")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("progress")).to_be_visible(timeout=RUN_TIMEOUT)
    page.goto("/#/history?status=IN_PROGRESS")
    expect(rows).to_have_count(1)
    rows.first.get_by_role("button", name=re.compile("Open request")).click()
    page.get_by_role("button", name="Cancel request").click()
    # The notice stays when the detail is drawn again with the request's new state.
    expect(page.locator(".request-detail .detail-status")).to_have_text(
        "Cancellation requested.")

    def none_running() -> bool:
        page.get_by_role("button", name="Refresh").click()
        page.wait_for_timeout(200)
        return page.locator(".count").text_content() == "No requests match."

    wait_for(none_running, timeout=20, what="the cancelled request to end")


# Keys and usage (ADMIN)


def test_admin_keys_and_usage(page: Page, browser: Browser, server: ServerProcess) -> None:
    page.goto("/#/keys")
    page.get_by_label("Name").fill("playground-test")
    page.get_by_role("button", name="Create key").click()
    secret = page.locator(".new-key code.secret")
    expect(secret).to_be_visible()
    api_key = secret.text_content()
    expect(page.locator("table")).to_contain_text("playground-test")
    screenshot(page, "keys")

    # An API key sees no admin pages.
    other = new_page(browser, server, api_key)
    other.goto("/")
    expect(other.locator(".cards li").first).to_be_visible()
    expect(other.get_by_role("link", name="Keys")).to_be_hidden()
    other.context.close()

    revoke = page.get_by_role("button", name="Revoke playground-test")
    revoke.click()
    revoke.click()
    expect(page.locator("tr", has_text="playground-test")).to_contain_text("revoked")

    page.goto("/#/usage")
    expect(page.locator("table")).to_contain_text("fal-ai/flux/schnell")
