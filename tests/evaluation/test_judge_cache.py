"""The judge cache: keys, identical reruns, and two processes writing at once."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from evaluation.judge_cache import JudgeCache, JudgeCacheError, JudgeIdentity, cache_key

SHA = "0123456789abcdef0123456789abcdef01234567"
JUDGE = JudgeIdentity(repo_id="org/judge-7b", revision=SHA)
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Rate this."}]
GREEDY = {"temperature": 0.0, "max_tokens": 2048}


def test_key_covers_judge_prompt_and_decoding():
    key = cache_key(JUDGE, MESSAGES, GREEDY)
    assert key == cache_key(JudgeIdentity(repo_id="org/judge-7b", revision=SHA), [dict(m) for m in MESSAGES], dict(GREEDY))
    others = [
        cache_key(JudgeIdentity(repo_id="org/judge-7b", revision="f" * 40), MESSAGES, GREEDY),
        cache_key(JudgeIdentity(endpoint="http://localhost:8000/v1", model="org/judge-7b"), MESSAGES, GREEDY),
        cache_key(JUDGE, MESSAGES[:1] + [{"role": "user", "content": "Rate this!"}], GREEDY),
        cache_key(JUDGE, MESSAGES, {**GREEDY, "temperature": 0.7}),
    ]
    assert len({key, *others}) == 5


@pytest.mark.parametrize("kwargs", [
    {"repo_id": "org/judge", "revision": "main"},
    {"repo_id": "org/judge"},
    {"endpoint": "http://localhost:8000/v1"},
    {},
])
def test_judges_must_be_pinned(kwargs):
    with pytest.raises(JudgeCacheError):
        JudgeIdentity(**kwargs)


def test_a_local_judge_is_pinned_by_its_content_hash():
    local = JudgeIdentity(repo_id="tiny-judge", revision="c" * 64)
    assert cache_key(local, MESSAGES, GREEDY) != cache_key(JudgeIdentity(repo_id="tiny-judge", revision="d" * 64),
                                                           MESSAGES, GREEDY)


def test_rerun_is_served_from_the_cache(tmp_path):
    calls = []

    def ask():
        calls.append(1)
        return f"Rating: [[{len(calls) + 6}]]"

    with JudgeCache(tmp_path / "judge.sqlite") as cache:
        first = cache.call(JUDGE, MESSAGES, GREEDY, ask)
    with JudgeCache(tmp_path / "judge.sqlite") as cache:  # a later run
        again = cache.call(JUDGE, MESSAGES, GREEDY, ask)
        logprobs = cache.call(JUDGE, MESSAGES, {**GREEDY, "logprobs": True}, lambda: {"top_logprobs": [{"token": "m", "logprob": -0.1}]})
        assert cache.put(JUDGE, MESSAGES, GREEDY, "Rating: [[1]]") == first  # the first answer stays
        assert len(cache) == 2
    assert first == again == "Rating: [[7]]" and calls == [1]
    assert logprobs == {"top_logprobs": [{"token": "m", "logprob": -0.1}]}


def _writer(path: str, worker: int, n: int) -> None:
    with JudgeCache(path) as cache:
        for i in range(n):
            shared = [{"role": "user", "content": f"shared question {i}"}]
            cache.call(JUDGE, shared, GREEDY, lambda: f"answer to {i} from {worker}")
            own = [{"role": "user", "content": f"question {i} of worker {worker}"}]
            cache.put(JUDGE, own, GREEDY, f"answer {i}")


def test_two_processes_writing_at_once(tmp_path):
    path = str(tmp_path / "judge.sqlite")
    JudgeCache(path).close()  # both workers then race on an existing, empty store
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(path, w, 300)) for w in range(2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
        assert p.exitcode == 0
    with JudgeCache(path) as cache:
        assert len(cache) == 300 + 2 * 300
        for i in range(300):
            shared = cache.get(JUDGE, [{"role": "user", "content": f"shared question {i}"}], GREEDY)
            assert shared in (f"answer to {i} from 0", f"answer to {i} from 1")
            for w in range(2):
                assert cache.get(JUDGE, [{"role": "user", "content": f"question {i} of worker {w}"}], GREEDY) == f"answer {i}"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
