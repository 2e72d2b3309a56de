"""The data sections: FLAC decode + crop + collate and noise + reverb on one thread
(:mod:`.input_path`), and the trainer's input path through a DataLoader with worker processes plus
the private memory one forked worker gains over a large data dir (:mod:`.data_loader`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from .measure import torch_threads
from .plan import Progress, Sizes

log = logging.getLogger("speechdistill.benchmark")


def pipeline_section(sizes: Sizes, data_dirs: Dict[str, Path], progress: Progress) -> Dict[str, Any]:
    """Decode + crop + collate and noise + reverb on one thread, in audio seconds per CPU-second
    (``*_per_core``) and per elapsed second."""
    from .input_path import run_bench

    progress.section("data pipeline")
    with torch_threads(1):
        run_bench(data_dirs["data"], data_dirs["noise"], data_dirs["rirs"], batch_size=sizes.pipeline_batch_size,
                  crop_seconds=sizes.pipeline_crop_seconds, batches=1, device="cpu")
        progress.tick()
        measured = run_bench(data_dirs["data"], data_dirs["noise"], data_dirs["rirs"],
                             batch_size=sizes.pipeline_batch_size, crop_seconds=sizes.pipeline_crop_seconds,
                             batches=sizes.pipeline_batches, device="cpu")
        progress.tick()
    audio = measured["audio"]
    result = {
        "threads": 1, "batches": sizes.pipeline_batches, "batch_size": sizes.pipeline_batch_size,
        "crop_seconds": sizes.pipeline_crop_seconds, "audio_seconds": audio,
        # per core: audio seconds per CPU-second the part used (what other jobs on a shared machine
        # do not distort); wall: audio seconds per elapsed second on the one thread
        "decode_crop_collate_real_time_per_core": audio / measured["read_cpu"],
        "noise_reverb_real_time_per_core": audio / measured["augment_cpu"],
        "both_real_time_per_core": audio / measured["cpu"],
        "decode_crop_collate_real_time": audio / measured["read"],
        "noise_reverb_real_time": audio / measured["augment"],
        "both_real_time": audio / (measured["read"] + measured["augment"]),
    }
    log.info("data pipeline (1 thread): decode+crop+collate %.0fx, noise+reverb %.0fx real time per core (wall: "
             "%.0fx, %.0fx)", result["decode_crop_collate_real_time_per_core"],
             result["noise_reverb_real_time_per_core"], result["decode_crop_collate_real_time"],
             result["noise_reverb_real_time"])
    return result


def data_loader_section(sizes: Sizes, data_dirs: Dict[str, Path], work_dir: Path, progress: Progress
                        ) -> Dict[str, Any]:
    """DataLoader throughput (audio seconds per second) and one forked worker's private memory growth
    (MiB) after touching every item of a ``sizes.index_utterances``-utterance data dir."""
    import shutil

    from .data_loader import loader_throughput, worker_memory_growth, write_index_dir

    progress.section("data loader")
    throughput = loader_throughput(data_dirs["data"], workers=sizes.loader_workers,
                                   crop_seconds=sizes.pipeline_crop_seconds, batch_seconds=sizes.loader_batch_seconds,
                                   batches=sizes.loader_batches)
    progress.tick()
    log.info("DataLoader, %d workers, FLAC crops of %g s: %.0f audio-s/s (%d batches)", throughput["workers"],
             throughput["crop_seconds"], throughput["audio_seconds_per_second"], throughput["batches"])
    progress.section(f"worker memory, {sizes.index_utterances:,}-utterance dir")
    index_dir = write_index_dir(work_dir / "index", sizes.index_utterances)
    try:
        memory = worker_memory_growth(index_dir)
    finally:
        shutil.rmtree(index_dir, ignore_errors=True)
    progress.tick()
    log.info("one DataLoader worker after touching every item of a %d-utterance dir: +%.1f MiB private memory "
             "(index built in %.1f s)", memory["utterances"], memory["growth_mb"], memory["load_seconds"])
    return {"throughput": throughput, "worker_memory": memory}
