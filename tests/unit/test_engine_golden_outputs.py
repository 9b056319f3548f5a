"""The engine's output bytes are pinned: a corpus of commands (tests/support/engine_corpus.py)
run through parsing, deciding, storing and completing must publish the same Kafka records
and insert the same commit documents, byte for byte, as the engine that recorded
tests/unit/engine_outputs/golden.txt. Changes that only make the engine cheaper must
keep this test green unchanged."""

from __future__ import annotations

from tests.support.engine_corpus import GOLDEN, corpus_lines, digest


def test_the_engine_emits_the_recorded_bytes_for_the_corpus() -> None:
    golden = GOLDEN.read_text().splitlines()
    lines = corpus_lines()
    for position, (line, expected) in enumerate(zip(lines, golden, strict=False)):
        assert digest(line) == expected, f"line {position} differs; the engine now emits:\n{line}"
    assert len(lines) == len(golden)
