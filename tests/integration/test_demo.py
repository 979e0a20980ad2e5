"""`fmtl demo` end to end: a real coordinator and four real agent processes on loopback.

Each test runs the command a user runs, with small settings (2 rounds, short deadlines),
then checks what the user relies on: it exits 0, the report exists and holds a learning
curve per task, every round has federation-wide task-wise results (from the secure sums)
over exactly the hospitals that took part, only hospitals that opted in have results of
their own, and every hospital's privacy spend was recorded for every round it took part in.
The production variant runs the same demo on PostgreSQL with a Redis broker and separate
worker and beat processes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fmtl.demo.example import load_example, locate_example
from fmtl.demo.record import DemoRecord

pytestmark = pytest.mark.integration

#: A two-round demo takes well under this on two cores; a hang fails instead of blocking CI.
DEMO_TIMEOUT_S = 420
FAST = ["--rounds", "2", "--stage-timeout", "20", "--epsilon", "6"]


def _demo(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    return subprocess.run(
        [sys.executable, "-m", "fmtl", "demo", "--out", str(out), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )


def _check_run(
    out: Path,
    done: subprocess.CompletedProcess[str],
    rounds: int,
    opted_in: tuple[str, ...] = (),
) -> DemoRecord:
    assert done.returncode == 0, f"demo failed:\n{done.stderr[-3000:]}\n{done.stdout[-3000:]}"
    report = out / "report.html"
    assert str(report) in done.stdout.replace("\n", "")
    page = report.read_text(encoding="utf-8")
    example = load_example(locate_example())
    for task in example.task_kinds:
        assert f'aria-label="{task}: ' in page, f"no learning curve for {task}"
    assert 'aria-label="Cumulative ε per hospital' in page
    assert 'aria-label="Round timeline"' in page

    record = DemoRecord.load(out / "record.json")
    assert [r.number for r in record.rounds] == list(range(1, rounds + 1))
    assert all(r.stage == "completed" for r in record.rounds)
    names = record.institution_names()
    for round_info in record.rounds:
        in_sum = {
            names[p.institution_id] for p in round_info.participant_list if p.status == "completed"
        }
        assert len(in_sum) >= (round_info.threshold or 3)
        results = [r for r in record.results if r.round == round_info.number]
        for task in example.task_kinds:
            holders = [h.name for h in example.hospitals if h.name in in_sum and task in h.tasks]
            wide = [r for r in results if r.task == task and r.institution is None]
            assert wide, f"no federation-wide result for {task} in round {round_info.number}"
            assert {r.institutions for r in wide} == {len(holders)}
            for name in holders:
                own = [r for r in results if r.task == task and r.institution == name]
                assert bool(own) is (name in opted_in), f"{name}/{task}: {own}"
        assert {r.institution for r in results} <= {None, *opted_in}
    # Every hospital's ε grows with each round it trains in, stays within its budget, and
    # the coordinator's recomputation agrees with what the agent reported.
    for hospital in example.hospitals:
        spent = sorted(
            (e.round, e.recomputed_epsilon) for e in record.ledger if e.institution == hospital.name
        )
        assert spent, f"no privacy spend recorded for {hospital.name}"
        epsilons = [eps for _, eps in spent]
        assert epsilons == sorted(epsilons)
        assert epsilons[-1] <= 6.0 + 1e-9
    assert not [e for e in record.ledger if e.mismatch]
    assert record.audit is not None
    assert record.audit.ok
    # Child logs are files in the run folder, and no secret reached them.
    logs = {p.name for p in (out / "logs").iterdir()}
    assert {"coordinator.log", "agent-cleveland.log", "agent-va.log"} <= logs
    for log in (out / "logs").iterdir():
        text = log.read_text(errors="replace")
        assert "fmtl_enroll_" not in text
        assert "fmtl_api_" not in text
    return record


def _demo_serving(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`fmtl demo --serve`: once it prints the console's URL, sign in there with the token
    the run folder holds and read the ledger page, then Ctrl-C: it stops and exits 0."""
    import re
    import signal
    import threading
    import time

    import httpx

    env = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "fmtl", "demo", "--out", str(out), "--serve", *args],
        env={**env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(demo.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    deadline = time.monotonic() + DEMO_TIMEOUT_S
    url = None
    while url is None and demo.poll() is None and time.monotonic() < deadline:
        found = re.search(r"console: (http://127\.0\.0\.1:\d+/console)", "".join(lines))
        url = found.group(1) if found else None
        time.sleep(0.5)
    try:
        assert url is not None, f"no console URL printed:\n{''.join(lines)[-3000:]}"
        token = (out / "admin_token").read_text().strip()
        assert (out / "admin_token").stat().st_mode & 0o777 == 0o600
        with httpx.Client(
            base_url=url.removesuffix("/console"), timeout=30, follow_redirects=True
        ) as browser:
            signed = browser.post("/console/sign-in", data={"token": token})
            assert signed.status_code == 200, signed.text  # followed to the federations
            assert "heart_disease" in signed.text
            ledger = browser.get("/console/federations/heart_disease/ledger")
            assert ledger.status_code == 200
            assert 'aria-label="Cumulative ε per institution' in ledger.text
            for hospital in ("cleveland", "hungarian", "switzerland", "va"):
                assert f"<td>{hospital}</td>" in ledger.text
        assert demo.poll() is None  # still serving
    finally:
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=60)
        reader.join(timeout=10)
    return subprocess.CompletedProcess(demo.args, demo.returncode, "".join(lines), stderr)


def test_demo_runs_rounds_with_four_agent_processes_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _demo_serving(out, *FAST, "--share-own-metrics", "cleveland")
    record = _check_run(out, done, rounds=2, opted_in=("cleveland",))
    assert all(r.participants == 4 for r in record.rounds)
    assert "federation-wide, over the union" in done.stdout.replace("\n", " ")
    assert "task-wise results" in done.stdout
    assert "Privacy spend" in done.stdout
    _admin_reads_the_run_afterwards(out, tmp_path)


def _admin_reads_the_run_afterwards(out: Path, tmp_path: Path) -> None:
    """docs/demo.md: the run folder can be served again and queried with `fmtl admin`."""
    import json
    import time

    import httpx

    from fmtl.demo.run import free_port

    port = free_port()
    base = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    env = {**base, "FMTL_STATE_DIR": str(out / "coordinator"), "FMTL_PORT": str(port)}
    token = subprocess.run(
        [sys.executable, "-m", "fmtl", "coordinator", "create-token", "--role", "admin"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.strip()  # fmt: skip
    with (tmp_path / "serve-again.log").open("wb") as sink:
        serve = subprocess.Popen(
            [sys.executable, "-m", "fmtl", "coordinator", "serve"],
            env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert serve.poll() is None, (tmp_path / "serve-again.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the coordinator did not serve the run again"
            time.sleep(0.2)
        admin_env = {**base, "FMTL_ADMIN_TOKEN": token, "FMTL_COORDINATOR_URL": url}

        def admin(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "fmtl", "admin", *args],
                env=admin_env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        rounds = admin("rounds", "heart_disease", "--json")
        assert rounds.returncode == 0, rounds.stderr
        assert [r["stage"] for r in json.loads(rounds.stdout)] == ["completed", "completed"]
        results = admin("results", "heart_disease", "--round", "2")
        assert results.returncode == 0, results.stderr
        assert "disease" in results.stdout
        audit = admin("audit-verify")
        assert audit.returncode == 0, audit.stderr
        assert audit.stdout.startswith("audit log intact")
    finally:
        serve.terminate()
        serve.wait(30)


def test_demo_recovers_from_an_agent_killed_after_share_keys(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _demo(out, *FAST, "--agents-drop-at", "masked_input", "--drop-round", "1")
    record = _check_run(out, done, rounds=2)
    first, second = record.rounds
    names = record.institution_names()
    dropped = [names[p.institution_id] for p in first.participant_list if p.status == "dropped"]
    assert dropped == ["va"]
    # The restarted agent takes part again in the next round.
    assert {
        names[p.institution_id] for p in second.participant_list if p.status == "completed"
    } == set(names.values())
    assert any("killed the agent of va" in e.what for e in record.events)


def test_demo_on_postgresql_redis_and_a_worker_process(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    out = tmp_path / "run"
    done = _demo(out, *FAST, "--postgres", postgres_url, "--redis", redis_url)
    record = _check_run(out, done, rounds=2)
    assert record.stack.startswith("PostgreSQL, Redis broker")
    assert (out / "logs" / "coordinator-worker.log").is_file()


def _processes_of(run_dir: Path) -> list[int]:
    """Processes still running for this demo: by the run folder in their command line or
    their FMTL_STATE_DIR (the coordinator's)."""
    needle = str(run_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or b"FMTL_STATE_DIR=" + needle in environ:
            found.append(int(entry.name))
    return found


def test_ctrl_c_stops_every_child_process(tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if not key.startswith("FMTL_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "fmtl", "demo", "--out", str(out), *FAST],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        # Interrupt once the agents run (their logs exist): the most children at once.
        while not (out / "logs" / "agent-va.log").exists():
            assert demo.poll() is None, demo.communicate()
            assert time.monotonic() < deadline, "the agents never started"
            time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        _, stderr = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted: stopped every child")
    assert _processes_of(out) == []


def test_a_data_file_missing_a_mapped_column_stops_the_demo_in_one_line(tmp_path: Path) -> None:
    import shutil

    example = tmp_path / "example"
    shutil.copytree(locate_example(), example)
    mapping = example / "mapping_va.toml"
    # The mapping stays consistent (features, missing values, public scales all name the
    # column); only the data file lacks it.
    mapping.write_text(re.sub(r"\bchol\b", "cholesterol", mapping.read_text()))
    out = tmp_path / "run"
    done = _demo(out, *FAST, "--example", str(example))
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: agent-va")
    assert str(out / "logs") in lines[0]
    assert "cholesterol" in lines[0]
    assert _processes_of(out) == []
