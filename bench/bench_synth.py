"""Benchmark: generate the default built-in corpus and print its speed.

Prints clips (one utterance in one language) per second, source utterances and CSV rows per
second, seconds per clip split into eSpeak synthesis vs resampling + WAV encoding + the rest
(planning, file and CSV writing), and the total wall time; then what the MELD-ST reader sees:
test utterances and speakers per language × gender (English de-duplicated over the two pairs).
Not run by pytest.

    .venv/bin/python bench/bench_synth.py [--utterances-per-pair 640] [--seed 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from llmfair.data.meld_st import read_meld_st

from llmfair.data.synth import SynthConfig, generate_corpus
from llmfair.data.synth import corpus as corpus_module
from llmfair.data.synth import espeak as espeak_module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances-per-pair", type=int, default=SynthConfig.utterances_per_pair)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = SynthConfig(seed=args.seed, utterances_per_pair=args.utterances_per_pair)

    timers = {"synthesis": 0.0, "resample+encode": 0.0}
    calls = {"synthesis": 0, "resample+encode": 0}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[name] += time.perf_counter() - start
                calls[name] += 1
        return wrapper

    real_synth, real_wav = espeak_module.synthesize, corpus_module.wav_bytes
    espeak_module.synthesize = timed("synthesis", real_synth)
    corpus_module.wav_bytes = timed("resample+encode", real_wav)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            manifest = generate_corpus(Path(tmp) / "corpus", config)
            total = time.perf_counter() - start
            test = read_meld_st(Path(tmp) / "corpus", splits=["test"])  # one example per utterance (audio)
    finally:
        espeak_module.synthesize, corpus_module.wav_bytes = real_synth, real_wav

    counts = manifest["counts"]
    clips = calls["resample+encode"]
    rows = sum(counts["pairs"][p][s]["rows"] for p in counts["pairs"] for s in ("train", "dev", "test"))
    rest = total - timers["synthesis"] - timers["resample+encode"]
    print(f"config: utterances_per_pair={config.utterances_per_pair} seed={config.seed}")
    print(f"clips synthesised: {clips} (eSpeak calls {calls['synthesis']}); source utterances "
          f"{counts['source_utterances']}; CSV rows {rows}; wav files {counts['audio_files']}")
    print(f"throughput: {clips / total:.1f} clips/s, {counts['source_utterances'] / total:.1f} source utterances/s, "
          f"{rows / total:.1f} rows/s")
    print(f"per clip: synthesis {1000 * timers['synthesis'] / clips:.2f} ms | resample+encode "
          f"{1000 * timers['resample+encode'] / clips:.2f} ms | planning+writing {1000 * rest / clips:.2f} ms")
    print(f"resampling+writing total: {timers['resample+encode'] + rest:.2f} s; synthesis total: "
          f"{timers['synthesis']:.2f} s")
    print(f"total wall time: {total:.2f} s")
    utterances, speakers = Counter(), defaultdict(set)
    for e in test:
        utterances[(e.language, e.gender)] += 1
        speakers[(e.language, e.gender)].add(e.speaker)
    print("test split (utterances / speakers; each utterance is an audio and an audio_text example):")
    for lang in ("eng", "deu", "jpn"):
        print(f"  {lang}: " + ", ".join(f"{g} {utterances[(lang, g)]} / {len(speakers[(lang, g)])}"
                                        for g in ("female", "male")))


if __name__ == "__main__":
    main()
