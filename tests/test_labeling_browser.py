"""The labeling page in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver (`make test` installs both; without them these tests skip and say so).

In-process: a person labels text pairs by click and by key, a ranking by keys with a typed correction, reloads
the page, and a second browser sees only what is left. End to end (`python main.py`): Pendulum clips labeled
in the browser train the reward, with a kill in the middle that loses no label; the text track's run with
tiny models; and online preferences that wait for each round's labels, killed while they wait.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.run import RunContext
from plugins.labeling.server import WebLabeler
from plugins.labeling.store import Query, content_id

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover
    webdriver = None

pytestmark = pytest.mark.skipif(
    webdriver is None or CHROMIUM is None or CHROMEDRIVER is None,
    reason="the browser tests need Selenium, Chromium and ChromeDriver: `make test` installs them (Debian packages "
           "chromium and chromium-driver)")


@pytest.fixture
def browsers() -> Iterator[Any]:
    """Opens headless Chromium windows on demand; all are closed after the test."""
    opened: list[WebDriver] = []

    def open_one() -> WebDriver:
        options = Options()
        options.binary_location = CHROMIUM  # type: ignore[assignment]
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1200,900"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        opened.append(driver)
        return driver

    yield open_one
    for driver in opened:
        driver.quit()


def sign_in(driver: WebDriver, url: str, name: str) -> None:
    driver.get(url)
    driver.find_element(By.ID, "annotator").send_keys(name + "\n")
    WebDriverWait(driver, 90).until(lambda d: d.find_element(By.ID, "progress").text)


def labeled(driver: WebDriver) -> int:
    """The page's own count of labels in ("3 / 6 labeled ...")."""
    return int(driver.find_element(By.ID, "progress").text.split("/")[0])


def answer(driver: WebDriver, how: str) -> None:
    """Answer the query shown: "click:<button id>" or "key:<key>"; waits until the page counts the label."""
    before = labeled(driver)
    WebDriverWait(driver, 90).until(lambda d: d.find_element(By.ID, "query").is_displayed())
    kind, what = how.split(":", 1)
    if kind == "click":
        driver.find_element(By.ID, what).click()
    else:
        driver.find_element(By.TAG_NAME, "body").send_keys(what)
    WebDriverWait(driver, 90).until(lambda d: labeled(d) > before)


def shown_texts(driver: WebDriver) -> list[str]:
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#items li pre")]


def test_labels_by_click_and_key_survive_a_reload_and_a_second_browser_sees_only_the_rest(
        tmp_path: Path, browsers: Any) -> None:
    pairs = [Query(items=[2 * k, 2 * k + 1], item_ids=[content_id(f"p{k}", "a"), content_id(f"p{k}", "b")],
                   prompt=f"prompt {k}", texts=[f"left answer {k}", f"right answer {k}"]) for k in range(4)]
    ranking = Query(items=[8, 9, 10], item_ids=["r0", "r1", "r2"], prompt="rank us", texts=["one", "two", "three"])
    labeler = WebLabeler(port=0, labels=str(tmp_path / "labels.jsonl"), poll=0.05)
    run = RunContext(seed=0, output_dir=tmp_path, tracker=None, progress=False)  # type: ignore[arg-type]
    labeler.open(run, "rexlab · test", "Which response is better?", corrections=True)
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.update(labels=labeler.ask([*pairs, ranking], run)), daemon=True)
    thread.start()
    try:
        first = browsers()
        sign_in(first, labeler.url, "ada")
        assert first.find_element(By.ID, "prompt").text == "prompt 0"
        assert shown_texts(first) == ["left answer 0", "right answer 0"]
        first.save_screenshot(str(tmp_path / "text_pair.png"))
        answer(first, "click:left")
        answer(first, f"key:{Keys.ARROW_RIGHT}")
        first.refresh()  # a reload shows the next unlabeled query, and the name is remembered
        WebDriverWait(first, 20).until(lambda d: d.find_element(By.ID, "prompt").text == "prompt 2")
        assert labeled(first) == 2
        answer(first, "key:3")  # equally good

        second = browsers()
        sign_in(second, labeler.url, "bob")  # ada is looking at prompt 3, so bob gets the next one
        assert second.find_element(By.ID, "prompt").text == "rank us" and labeled(second) == 3
        assert first.find_element(By.ID, "prompt").text == "prompt 3"
        answer(first, "key:0")  # can't tell
        assert second.find_element(By.ID, "submit").is_displayed()
        assert not second.find_element(By.ID, "left").is_displayed()
        body = second.find_element(By.TAG_NAME, "body")
        body.send_keys("3")
        body.send_keys("1")  # three, one, (two implied)
        second.find_element(By.ID, "correction").send_keys("zero, the best")
        second.save_screenshot(str(tmp_path / "text_ranking.png"))
        answer(second, f"key:{Keys.ENTER}")
        WebDriverWait(second, 20).until(lambda d: d.find_element(By.ID, "done").is_displayed())
        thread.join(20)
        assert not thread.is_alive()
    finally:
        labeler.close()
    lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [(x["annotator"], x.get("chosen"), x.get("probability"), x.get("skipped")) for x in lines[:4]] == [
        ("ada", "left answer 0", None, None), ("ada", "right answer 1", None, None),
        ("ada", "left answer 2", 0.5, None),
        ("ada", None, None, True)]
    assert lines[4]["responses"] == ["zero, the best", "three", "one", "two"] and lines[4]["correction"] is True
    assert [len(done["labels"][q.id]) for q in [*pairs, ranking]] == [1, 1, 1, 1, 1]


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_run_left_behind() -> Iterator[None]:
    """A run a failing test leaves waiting for labels is killed with the test."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(30)


class Run:
    """`python main.py ...` in a subprocess, its output in a file; the labeling page's URL read from it."""

    def __init__(self, cwd: Path, *overrides: str) -> None:
        self.log = cwd / f"main-{time.monotonic_ns()}.log"
        env = os.environ | {"OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
        with open(self.log, "w") as out:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "progress=false",
                                             "preference.web.port=0", "video.enabled=false", *overrides],
                                            cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        STARTED.append(self.process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def url(self, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while (found := re.search(r"labeling page: (\S+)", self.output())) is None:
            assert self.process.poll() is None, f"the run ended before serving the page:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, self.output()[-3000:]
            time.sleep(0.5)
        return found[1]

    def wait(self, timeout: float = 300) -> str:
        self.process.wait(timeout)
        return self.output()


def label_all(driver: WebDriver, url: str, count: int, name: str = "ada") -> None:
    sign_in(driver, url, name)
    for k in range(count):
        answer(driver, "click:left" if k % 2 else f"key:{Keys.ARROW_LEFT if k % 4 else '2'}")


def test_pendulum_clips_labeled_in_the_browser_train_the_reward_and_a_kill_loses_no_label(
        in_tmp: Path, browsers: Any) -> None:
    command = ("env=pendulum", "preference=human", "experiment=debug", "evaluation.episodes=2")
    first = Run(in_tmp, *command)
    driver = browsers()
    sign_in(driver, first.url(), "ada")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#items li img")) == 2
    answer(driver, "click:right")
    answer(driver, f"key:{Keys.ARROW_LEFT}")
    answer(driver, "key:3")
    first.process.send_signal(signal.SIGTERM)  # the run (and its page) stop with 3 of 6 labels in
    output = first.wait()
    assert first.process.returncode == 143, output[-2000:]
    folder = re.search(r"resume=(\S+)", output)[1]  # type: ignore[index]
    labels = Path(folder) / "checkpoints" / "human" / "labels.jsonl"
    assert len(labels.read_text().splitlines()) == 3

    again = Run(in_tmp, *command, f"resume={folder}")
    sign_in(driver, again.url(), "ada")  # (another port: the browser keeps the name per port)
    WebDriverWait(driver, 90).until(lambda d: d.find_element(By.ID, "query").is_displayed())
    assert labeled(driver) == 3  # only the 3 unlabeled queries are left
    for _ in range(3):
        answer(driver, "click:left")
    output = again.wait()
    assert again.process.returncode == 0, output[-3000:]
    assert len(labels.read_text().splitlines()) == 6
    summary = output[output.index(" done: "):]
    assert "preference/pairs=7" in summary and "reward/val_pair_accuracy" in summary  # the tie counts both ways
    assert "eval/true_return_mean" in summary


def test_the_text_track_trains_its_reward_model_on_labels_from_the_page(in_tmp: Path, browsers: Any, char_lm_dir: str,
                                                                        tiny_encoder_dir: str) -> None:
    run = Run(in_tmp, "env=text", "reward=bradley_terry", "preference=human", "policy=ppo", "budget=debug",
              f"env.model={char_lm_dir}", f"reward.model={tiny_encoder_dir}", "preference.num_queries=4")
    driver = browsers()
    url = run.url()
    sign_in(driver, url, "ada")
    assert driver.find_element(By.ID, "prompt").text and len(shown_texts(driver)) == 2
    for k in range(4):
        answer(driver, "click:left" if k % 2 else f"key:{Keys.ARROW_RIGHT}")
    output = run.wait()
    assert run.process.returncode == 0, output[-3000:]
    summary = output[output.index(" done: "):]
    assert "preference/pairs=4" in summary and "eval/gold_reward_mean" in summary


def test_online_preferences_wait_for_each_round_and_a_kill_while_waiting_resumes_right_before_it(
        in_tmp: Path, browsers: Any) -> None:
    """PPO at 256 env steps an iteration, rounds at 1365 and 2730 steps: it checkpoints after iteration 5 (1280
    steps), before the round that waits; a kill in the wait resumes there and the page asks the same round."""
    command = ("env=pendulum", "preference=online", "preference.labeler=human", "experiment=debug",
               "evaluation.episodes=2", "preference.num_queries=6", "preference.rounds=2",
               "preference.selection=uniform", "policy.total_timesteps=4096", "ppo.num_steps=64")
    first = Run(in_tmp, *command)
    driver = browsers()
    label_all(driver, first.url(), 3)  # 2 before RL, then 1 of round 1's 2 while PPO waits
    checkpoint = next(in_tmp.glob("outputs/*/*/checkpoints/resume/policy.ckpt"))
    first.process.send_signal(signal.SIGTERM)
    output = first.wait()
    assert first.process.returncode == 143, output[-2000:]
    folder = re.search(r"resume=(\S+)", output)[1]  # type: ignore[index]

    again = Run(in_tmp, *command, f"resume={folder}")
    label_all(driver, again.url(), 3)  # the other of round 1, then round 2's 2
    output = again.wait()
    assert again.process.returncode == 0, output[-3000:]
    assert f"resumed from {checkpoint} at training step 5" in output
    assert "1 of the 2 labels asked are in" in output  # the same round, its fragments made again
    assert "preference/queries=6" in output[output.index(" done: "):]
    labels = checkpoint.parent.parent / "human" / "labels.jsonl"
    assert len(labels.read_text().splitlines()) == 6
