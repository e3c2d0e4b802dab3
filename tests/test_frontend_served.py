"""The tab over what a real `tensorboard` serves, under both `--load_fast` values, in a real Chromium: layers not recorded, kinds, the loss, notes, broken files, a growing run."""

from __future__ import annotations

import json
import math
import urllib.parse

import numpy as np
import pytest
from support.browser import (  # noqa: F401  (fixtures)
    ENTRY,
    HEATMAP_TOP_PX,
    LOAD_TIMEOUT_MS,
    NONFINITE_RGB,
    ROUTES,
    Page,
    browser,
    page,
    tensorboard_process,
)

from tb_gradhealth.summary import GradientHealthFileWriter

pytestmark = pytest.mark.slow

# A run whose layer set changes at SET_CHANGE: a, b, c, then a, d (as a writer does when layers are frozen or added).
SETS_RUN = "layer_sets"
FIRST_SET = (["a", "b", "c"], ["conv", "normalization", "conv"])
SECOND_SET = (["a", "d"], ["conv", "dense"])
SETS_STEPS = 60
SET_CHANGE = 30
ZERO_STEPS = range(10, 20)  # b has no gradient at all here: exactly 0
NAN_STEP = 5  # c is NaN here
# Recorded by GradientHealthCallback: the head trained with the base frozen, then the base with the head frozen.
TRANSFER_RUN = "transfer/train"
TRANSFER_FIT_STEPS = 12
# A run with bytes after its last record that are no record: TensorBoard's loaders stop there.
BROKEN_RUN = "broken"
GARBAGE = b"\x00 not a record \xff" * 4
# A run that grows while the tab shows it.
LIVE_RUN = "live"
LIVE_LAYERS = ["dense", "dense_1", "dense_2"]
LIVE_STEPS = 40
LIVE_NEW_STEPS = 10
RELOAD_INTERVAL_S = 1

# colormap.js and view_profile.js: the grey of exact zeros, and the profile's plot box.
ZERO_RGB = (205, 205, 210)
PROFILE_LEFT_PX, PROFILE_RIGHT_PX, PROFILE_TOP_PX, PROFILE_PLOT_HEIGHT_PX = 58, 12, 18, 154
# view_heatmap.js: rows are this tall when few.
HEATMAP_ROW_PX = 24
# colormap.js: the colours of the first layers' lines.
LINE_RGB = [(0x4E, 0x79, 0xA7), (0xF2, 0x8E, 0x2B), (0x59, 0xA1, 0x4F), (0xE1, 0x57, 0x59)]
# A bar has hundreds of pixels of its colour; text (e.g. "not recorded") a few coloured fringe pixels.
BAR_MIN_PIXELS = 50
# How close (RGB distance) a pixel is to a line's colour to count as that line.
LINE_RGB_DISTANCE = 40


def sets_loss(step: int) -> float:
    return 2.0 / (1.0 + 0.1 * step)


def sets_values(step: int) -> np.ndarray:
    """grad_norm of the layer set written at `step`."""
    if step < SET_CHANGE:
        values = np.array([1.0, 0.5, 0.05]) * (1.0 + 0.01 * step)
        if step in ZERO_STEPS:
            values[1] = 0.0
        if step == NAN_STEP:
            values[2] = np.nan
        return values
    return np.array([0.8, 0.02]) * (1.0 + 0.01 * step)


def write_live(run_dir, steps) -> None:
    with GradientHealthFileWriter(str(run_dir)) as writer:
        for step in steps:
            # Periodic values: new steps leave the value and colour scales as they were.
            norms = [0.1 * (1 + step % 7), 0.3, 0.2 + 0.01 * (step % LIVE_STEPS)]
            writer.write(step, {"grad_norm": norms}, LIVE_LAYERS, loss=1.0 + 0.5 * (step % 5))


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory):
    """A transfer-learning run recorded by the callback: head trained (base frozen), then base (head frozen)."""
    import keras
    from support import sgd

    from tb_gradhealth import GradientHealthCallback

    root = tmp_path_factory.mktemp("transfer")
    model, base, head = sgd.base_and_head()
    x, y = sgd.make_data(TRANSFER_FIT_STEPS * sgd.BATCH)
    callback = GradientHealthCallback(str(root / "transfer"), update_freq=1)
    for frozen in (base, head):
        base.trainable = head.trainable = True
        frozen.trainable = False
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit(x, y, batch_size=sgd.BATCH, verbose=0, callbacks=[callback])
    return root / "transfer"


@pytest.fixture(scope="module", params=["false", "true"], ids=["load_fast_false", "load_fast_true"])
def served(request, tmp_path_factory, transfer_run):
    """(server, logdir) of a real tensorboard over the four runs, with one `--load_fast` value."""
    import shutil

    root = tmp_path_factory.mktemp("frontend_served")
    shutil.copytree(transfer_run, root / "transfer")
    with GradientHealthFileWriter(str(root / SETS_RUN)) as writer:
        for step in range(SETS_STEPS):
            layers, kinds = FIRST_SET if step < SET_CHANGE else SECOND_SET
            writer.write(step, {"grad_norm": sets_values(step)}, layers, kinds=kinds, loss=sets_loss(step))
    with GradientHealthFileWriter(str(root / BROKEN_RUN)) as writer:
        for step in range(6):
            writer.write(step, {"grad_norm": [1.0, 0.5]}, ["dense", "dense_1"])
    (event_file,) = (root / BROKEN_RUN).iterdir()
    with open(event_file, "ab") as stream:
        stream.write(GARBAGE)
    write_live(root / LIVE_RUN, range(LIVE_STEPS))
    args = ["--load_fast=%s" % request.param, "--reload_interval=%d" % RELOAD_INTERVAL_S]
    with tensorboard_process(root, "", *args) as server:
        # The Rust data server loads in the background: wait until every run is listed.
        server.wait_until(lambda: len(runs_of(server)) == 4, LOAD_TIMEOUT_MS / 1000, "every run to be listed")
        yield server, root


def runs_of(server) -> dict:
    return {entry["run"]: entry for entry in server.get_json(ROUTES + "/runs")["runs"]}


def get_json(server, route, **query):
    return server.get_json(ROUTES + route + ("?" + urllib.parse.urlencode(query) if query else ""))


def open_runs(page, server, runs):
    page.open_tab(
        server.url + ENTRY + "#" + urllib.parse.urlencode({"runs": json.dumps(runs)}, quote_via=urllib.parse.quote)
    )
    page.set_selection(runs)


def pick(page, run, *keys):
    """Picks a step from the keyboard on a run's trend, the mouse away: the read-outs show the picked step."""
    page.page.mouse.move(0, 0)
    over = page.cell(".trend-cell", run).locator(".trend-plot .u-over")
    for key in keys:
        over.press(key)


def read_out(page, run) -> dict:
    """{name: value text} of a run's trend legend, the step first."""
    return dict(
        page.cell(".trend-cell", run).evaluate(
            """(cell) => [...cell.querySelectorAll('.trend-legend .legend-item')].map(
                (item) => [item.querySelector('.legend-name').textContent, item.querySelector('.legend-value').textContent])"""
        )
    )


_CLASSIFY = """
    const plotBg = getComputedStyle(document.documentElement).getPropertyValue('--plot-bg').trim();
    const bg = [1, 3, 5].map((k) => parseInt(plotBg.slice(k, k + 2), 16));
    const same = (a, b) => a[0] === b[0] && a[1] === b[1] && a[2] === b[2];
    const classify = (rgb) => same(rgb, bg) ? 'empty' : same(rgb, red) ? 'nan' : same(rgb, zero) ? 'zero'
        : Math.max(...rgb) - Math.min(...rgb) > 60 ? 'value' : 'other';
"""


def heatmap_row(page, run, row):
    """{class: [count, mean x]} of the pixels across the middle of heatmap row `row`: empty (the plot's background), nan, zero, value."""
    return page.cell(".heatmap-cell", run).evaluate(
        """(cell, [y, red, zero]) => {
            %s
            const canvas = cell.querySelector('canvas');
            const data = canvas.getContext('2d').getImageData(0, Math.round(y * devicePixelRatio), canvas.width, 1).data;
            const found = {};
            for (let x = 0; x < canvas.width; x++) {
                if (data[4 * x + 3] === 0) continue;  // outside the plot
                const kind = classify([data[4 * x], data[4 * x + 1], data[4 * x + 2]]);
                found[kind] = found[kind] || [0, 0];
                found[kind][0]++;
                found[kind][1] += x / canvas.width;
            }
            for (const kind in found) found[kind][1] /= found[kind][0];
            return found;
        }"""
        % _CLASSIFY,
        [HEATMAP_TOP_PX + (row + 0.5) * HEATMAP_ROW_PX, list(NONFINITE_RGB), list(ZERO_RGB)],
    )


def profile_slots(page, run, slots):
    """Per bar slot of a run's layer profile, {class: pixel count} inside the plot box."""
    return page.cell(".profile-cell", run).evaluate(
        """(cell, [slots, left, right, top, height, red, zero]) => {
            %s
            const canvas = cell.querySelector('canvas');
            const ratio = devicePixelRatio;
            const slot = (canvas.width / ratio - left - right) / slots;
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            return [...Array(slots).keys()].map((b) => {
                const found = {};
                for (let y = Math.ceil(top * ratio); y < (top + height) * ratio; y++) {
                    for (let x = Math.ceil((left + slot * b + 2) * ratio); x < (left + slot * (b + 1) - 2) * ratio; x++) {
                        const at = 4 * (y * canvas.width + x);
                        if (data[at + 3] === 0) continue;
                        const kind = classify([data[at], data[at + 1], data[at + 2]]);
                        found[kind] = (found[kind] || 0) + 1;
                    }
                }
                return found;
            });
        }"""
        % _CLASSIFY,
        [
            slots,
            PROFILE_LEFT_PX,
            PROFILE_RIGHT_PX,
            PROFILE_TOP_PX,
            PROFILE_PLOT_HEIGHT_PX,
            list(NONFINITE_RGB),
            list(ZERO_RGB),
        ],
    )


def drawn_bars(slots) -> list:
    """The kind of bar in each profile slot (value, zero, nan), or None for a slot without one."""
    return [
        next((kind for kind in ("nan", "zero", "value") if slot.get(kind, 0) >= BAR_MIN_PIXELS), None) for slot in slots
    ]


def line_xs(page, run, rgb, x_range):
    """The steps (on the trend's x scale `x_range`) at which the plot has pixels of a line's colour."""
    return page.cell(".trend-cell", run).evaluate(
        """(cell, [rgb, [x0, x1], near]) => {
            const canvas = cell.querySelector('.trend-plot canvas');
            const over = cell.querySelector('.trend-plot .u-over').getBoundingClientRect();
            const box = canvas.getBoundingClientRect();
            const ratio = devicePixelRatio;
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            const steps = [];
            for (let i = 0; i < data.length; i += 4) {
                const distance = Math.hypot(data[i] - rgb[0], data[i + 1] - rgb[1], data[i + 2] - rgb[2]);
                if (data[i + 3] < 255 || distance > near) continue;
                const x = ((i / 4) % canvas.width) / ratio + box.left;
                steps.push(x0 + ((x - over.left) / over.width) * (x1 - x0));
            }
            return steps;
        }""",
        [list(rgb), list(x_range), LINE_RGB_DISTANCE],
    )


def test_layers_not_recorded_are_gaps_apart_from_nan_and_zero_in_every_view(served, page):
    server, _ = served
    open_runs(page, server, [SETS_RUN, TRANSFER_RUN])
    body = get_json(server, "/series", run=SETS_RUN, stat="grad_norm")
    assert body["layers"] == ["a", "b", "c", "d"] and body["values"][SET_CHANGE][1:3] == [None, None]
    last = SETS_STEPS - 1
    # Heatmap: b is a value, then exactly 0 (grey), then empty; c has its NaN step (red) and is empty after the change;
    # d is empty before it. Shares of the plot's width, one step each.
    b, c, d = (heatmap_row(page, SETS_RUN, row) for row in (1, 2, 3))
    share = lambda found, kind: found.get(kind, [0])[0] / sum(count for count, _ in found.values())  # noqa: E731
    expected = {
        "b": {"value": 20, "zero": len(ZERO_STEPS), "empty": SETS_STEPS - SET_CHANGE, "nan": 0},
        "c": {"value": SET_CHANGE - 1, "zero": 0, "empty": SETS_STEPS - SET_CHANGE, "nan": 1},
        "d": {"value": SETS_STEPS - SET_CHANGE, "zero": 0, "empty": SET_CHANGE, "nan": 0},
    }
    for name, found in zip("bcd", (b, c, d)):
        for kind, steps in expected[name].items():
            assert share(found, kind) == pytest.approx(steps / SETS_STEPS, abs=0.02), (name, kind, found)
    assert c["empty"][1] > c["value"][1] and d["empty"][1] < d["value"][1]
    assert "not recorded" in page.page.locator(".colour-legend").text_content()

    # Trend: the read-out says "not recorded" (not NaN, not 0), and the lines stop where the layers stop.
    pick(page, SETS_RUN, "End")
    shown = read_out(page, SETS_RUN)
    assert shown["Step"] == str(last) and shown["b"] == shown["c"] == "not recorded"
    assert float(shown["d"]) == pytest.approx(float(np.float32(sets_values(last)[1])), rel=5e-3)
    pick(page, SETS_RUN, "Home", *["ArrowRight"] * NAN_STEP)
    assert read_out(page, SETS_RUN)["c"] == "NaN" and read_out(page, SETS_RUN)["d"] == "not recorded"
    pick(page, SETS_RUN, *["ArrowRight"] * (ZERO_STEPS[0] - NAN_STEP))
    assert read_out(page, SETS_RUN)["b"] == "0"
    x_range = [0, last]
    c_steps, d_steps = (line_xs(page, SETS_RUN, LINE_RGB[j], x_range) for j in (2, 3))
    # d's colour is close to the pale edges of the red NaN marks at NAN_STEP: those columns are not d's line.
    d_steps = [step for step in d_steps if abs(step - NAN_STEP) > 1]
    assert c_steps and d_steps
    assert max(c_steps) < SET_CHANGE - 0.5 and min(d_steps) > SET_CHANGE - 0.5

    # Profile at the last step: no bar for b and c, and words that say why; at the zero step a grey bar for b.
    pick(page, SETS_RUN, "End")
    assert drawn_bars(profile_slots(page, SETS_RUN, 4)) == ["value", None, None, "value"]
    label = page.cell(".profile-cell", SETS_RUN).locator("canvas").get_attribute("aria-label")
    assert label.endswith("at step %d, 2 of them not recorded at that step" % last)
    pick(page, SETS_RUN, "Home", *["ArrowRight"] * ZERO_STEPS[0])
    assert drawn_bars(profile_slots(page, SETS_RUN, 4)) == ["value", "zero", "value", None]
    pick(page, SETS_RUN, "Home", *["ArrowRight"] * NAN_STEP)
    assert drawn_bars(profile_slots(page, SETS_RUN, 4)) == ["value", "value", "nan", None]

    # The run recorded by the callback: the head until the base was unfrozen, the base after, and no layer called dead.
    transfer = get_json(server, "/health", run=TRANSFER_RUN)["runs"][0]
    assert transfer["verdict"] == "healthy" and transfer["findings"] == []
    pick(page, TRANSFER_RUN, "Home")
    first = read_out(page, TRANSFER_RUN)
    pick(page, TRANSFER_RUN, "End")
    last_shown = read_out(page, TRANSFER_RUN)
    assert first["Step"] == "0" and last_shown["Step"] == str(2 * TRANSFER_FIT_STEPS - 1)
    assert first["base/b1"] == first["base/b2"] == "not recorded" and first["head"] != "not recorded"
    assert last_shown["head"] == "not recorded" and "not recorded" not in (last_shown["base/b1"], last_shown["base/b2"])
    rows = {
        name: heatmap_row(page, TRANSFER_RUN, row) for row, name in enumerate(runs_of(server)[TRANSFER_RUN]["layers"])
    }
    assert rows["head"]["value"][1] < rows["base/b1"]["value"][1] and "nan" not in rows["head"]
    assert page.errors == []


def test_kinds_group_the_rows_and_one_kind_is_shown_at_a_time(served, page):
    server, _ = served
    open_runs(page, server, [SETS_RUN])
    kinds = dict(
        zip(*(get_json(server, "/series", run=SETS_RUN, stat="grad_norm")[key] for key in ("layers", "kinds")))
    )
    assert kinds == dict(zip(*FIRST_SET)) | dict(zip(*SECOND_SET))
    heatmap = page.cell(".heatmap-cell", SETS_RUN)
    labels = lambda: heatmap.locator(".heatmap-label").all_text_contents()  # noqa: E731
    rows = "document.querySelector('.heatmap-cell canvas').dataset.rows"
    assert labels() == ["a", "b", "c", "d"]
    page.page.select_option("select[aria-label='Group rows']", "kind")
    # Dense, convolutions, normalisation (the contract's order of kinds), each group's layers in model order.
    page.page.wait_for_function("() => document.querySelector('.heatmap-label').textContent === 'd'")
    assert labels() == ["d", "a", "c", "b"]
    page.page.click("text=Collapse all")
    page.page.wait_for_function("() => %s === '3'" % rows)
    assert labels() == ["▸ dense (1)", "▸ conv (2)", "▸ normalization (1)"]
    page.page.click("text=Expand all")
    page.page.select_option("select[aria-label='Kind of layer']", "conv")
    page.page.wait_for_function("() => %s === '2'" % rows)
    assert labels() == ["a", "c"]
    profile = page.cell(".profile-cell", SETS_RUN).locator("canvas").get_attribute("aria-label")
    assert ": 2 rows at step" in profile
    # The trends still draw every layer: the kind is a view of the heatmap and the profile.
    assert page.cell(".trend-cell", SETS_RUN).locator(".legend-item.toggles").count() == 4
    assert page.errors == []


def test_the_loss_the_notes_and_a_broken_file_are_shown_as_the_server_says(served, page):
    server, _ = served
    open_runs(page, server, [BROKEN_RUN, SETS_RUN, TRANSFER_RUN])
    runs = runs_of(server)
    assert runs[SETS_RUN]["scalars"] == runs[TRANSFER_RUN]["scalars"] == ["loss"] and runs[BROKEN_RUN]["scalars"] == []
    # The loss chart over the trends of the runs that record it, on their picked step.
    assert page.cell(".trend-cell", BROKEN_RUN).locator(".loss").is_hidden()
    pick(page, SETS_RUN, "End")
    readout = page.cell(".trend-cell", SETS_RUN).locator(".loss-readout").text_content()
    assert readout == "step %d: %g" % (SETS_STEPS - 1, float("%.3g" % sets_loss(SETS_STEPS - 1)))
    loss = get_json(server, "/series", run=TRANSFER_RUN, stat="loss")
    assert loss["scope"] == "run" and len(loss["steps"]) == 2 * TRANSFER_FIT_STEPS
    readout = page.cell(".trend-cell", TRANSFER_RUN).locator(".loss-readout").text_content()
    step, value = readout.removeprefix("step ").split(": ")
    assert math.isclose(float(value), loss["values"][loss["steps"].index(int(step))][0], rel_tol=5e-3)
    # What the diagnosis could not check, per run, as /health says.
    health = {entry["run"]: entry for entry in get_json(server, "/health")["runs"]}
    for run in (BROKEN_RUN, SETS_RUN, TRANSFER_RUN):
        notes = page.cell(".panel-diagnosis .cell", run).locator(".diagnosis-notes li").all_text_contents()
        assert notes == health[run]["notes"], run
    assert health[BROKEN_RUN]["notes"]
    # The broken file: listed with its name and the server's message, and the run still drawn up to it.
    (problem,) = runs[BROKEN_RUN]["problems"]
    assert problem["message"].startswith("event file corrupt")
    notices = page.page.evaluate(
        "[...document.querySelectorAll('.notice-banner .notice')].map((item) => [item.dataset.run, item.dataset.file, item.textContent])"
    )
    assert notices == [[BROKEN_RUN, problem["file"], "%s: %s: %s" % (BROKEN_RUN, problem["file"], problem["message"])]]
    assert page.page.locator(".run-item[data-run=broken] .run-problems").text_content() == "⚠ 1 problem in its data"
    assert page.pixels(".heatmap-cell", BROKEN_RUN) > 0
    assert page.errors == []


def test_a_growing_run_is_refreshed_by_its_new_steps_alone(served, page, browser):
    server, logdir = served
    open_runs(page, server, [LIVE_RUN])
    last = LIVE_STEPS + LIVE_NEW_STEPS - 1
    write_live(logdir / LIVE_RUN, range(LIVE_STEPS, last + 1))
    server.wait_until(
        lambda: runs_of(server)[LIVE_RUN]["max_step"] == last, LOAD_TIMEOUT_MS / 1000, "the new steps to load"
    )
    answers = []
    page.page.on("response", lambda response: "/series?" in response.url and answers.append(response))
    page.page.click(".refresh-button")
    page.page.wait_for_function(
        "(last) => document.querySelector('.run-item[data-run=live] .run-meta').textContent.includes(last)",
        arg="step %d" % last,
    )
    page.wait_for_state()
    # The grad_norm and the loss: each asked for the steps after the last one the tab had, and got those alone.
    assert len(answers) == 2
    for response in answers:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(response.url).query)
        assert query["after_step"] == [str(LIVE_STEPS - 1)]
        body = json.loads(response.text())
        assert body["partial"] is True and body["steps"] == list(range(LIVE_STEPS, last + 1)), query["stat"]
    # Drawn as the whole series is drawn when the page opens afresh.
    pick(page, LIVE_RUN, "End")
    grown = page.cell(".heatmap-cell", LIVE_RUN).locator("canvas").evaluate("(canvas) => canvas.toDataURL()")
    shown = read_out(page, LIVE_RUN)
    fresh = Page(browser)
    try:
        fresh.open_tab(page.page.url)
        assert fresh.cell(".heatmap-cell", LIVE_RUN).locator("canvas").evaluate("(c) => c.toDataURL()") == grown
        pick(fresh, LIVE_RUN, "End")
        assert read_out(fresh, LIVE_RUN) == shown and shown["Step"] == str(last)
    finally:
        fresh.page.close()
    assert page.errors == []
