"""Retraining stages: data preparation, training, evaluation, registry, re-embedding.

Stages exchange paths and numbers only.  Store access happens in the flow process
(these tasks are called directly, never submitted), and every store open is short so
that an audit waiting for the database is not blocked by a training run.
"""
from __future__ import annotations

import re
from pathlib import Path

from prefect import get_run_logger, task

from deepssim.evaluation import RetrainConfig
from deepssim.store import Store

_STEP = re.compile(r"^step (\d+)/(\d+)")


@task(name="prepare-retrain-data", persist_result=False)
def prepare_retrain_data_task(db: str, cohort: str, config: dict, work_dir: str, size: int,
                              wait_s: float) -> dict:
    """Cohort pixels + phantoms -> train / validation / fixed evaluation sets (``.npz``
    in the private ``work_dir``).  Returns paths and counts only."""
    from deepssim.evaluation import cohort_image_set, retrain_data

    cfg = RetrainConfig.from_record(config)
    with Store(db, wait_s=wait_s) as store:
        images = store.cohort_images(cohort)
        pixels = store.load_pixels(images)
    if not len(images):
        raise ValueError(f"cohort '{cohort}' has no images to train on")
    data = retrain_data(cohort_image_set(images, pixels), cfg, size)
    paths = {}
    for name in ("train", "val", "eval"):
        paths[name] = str(Path(work_dir) / f"{name}.npz")
        getattr(data, name).save(paths[name])
    get_run_logger().info("retraining data: %s", {k: v for k, v in data.summary.items() if isinstance(v, int)})
    return {**paths, "summary": data.summary}


def _progress_logger(total_steps: int):
    """A ``log`` callback for :func:`deepssim.metric.train.train_encoder` that mirrors its step lines
    into a Prefect progress artifact (the trainer reports ``step N/TOTAL`` at each
    evaluation)."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    artifact = create_progress_artifact(progress=0.0, key="deepssim-training-progress",
                                        description=f"DeepSSIM challenger training ({total_steps} steps max)")
    logger = get_run_logger()

    def log(message: str) -> None:
        logger.info(message)
        m = _STEP.match(message)
        if m:
            update_progress_artifact(artifact_id=artifact, progress=100.0 * int(m.group(1)) / max(1, int(m.group(2))))

    return log, artifact


@task(name="train-challenger", persist_result=False)
def train_challenger_task(data: dict, champion_path: str, config: dict, out_path: str) -> dict:
    """Train a challenger (fine-tuned from the champion or from scratch) and save its
    checkpoint at ``out_path``."""
    import torch
    from prefect.artifacts import update_progress_artifact

    from deepssim.metric import load_checkpoint, save_checkpoint
    from deepssim.metric import TrainConfig, train_encoder
    from deepssim.metric import ImageSet, as_pool

    cfg = RetrainConfig.from_record(config)
    champion, meta = load_checkpoint(champion_path)
    init, parent, encoder = None, None, meta.encoder
    if cfg.init != "scratch":
        start, start_meta = (champion, meta) if cfg.init == "champion" else load_checkpoint(cfg.init)
        if start_meta.encoder.input_size != meta.encoder.input_size:
            raise ValueError(f"the init checkpoint's input size ({start_meta.encoder.input_size}) differs from "
                             f"the champion's ({meta.encoder.input_size}), at which the training data was prepared")
        # the challenger is the init checkpoint's network (e.g. a newer shipped model over an older champion)
        init, parent, encoder = start.state_dict(), start_meta.model_id, start_meta.encoder
    train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                            seed=cfg.seed, eval_every=max(1, cfg.eval_every), eval_pairs=min(256, cfg.eval_pairs),
                            time_budget_s=cfg.time_budget_s, device=cfg.device)
    log, artifact = _progress_logger(cfg.steps)
    torch.manual_seed(cfg.seed)
    result = train_encoder(as_pool(ImageSet.load(data["train"])), as_pool(ImageSet.load(data["val"])), train_cfg,
                   encoder=encoder, init_state=init, log=log)
    update_progress_artifact(artifact_id=artifact, progress=100.0)
    training = {"init": cfg.init if cfg.init in ("champion", "scratch") else "checkpoint", "parent": parent,
                "steps": result.steps, "best_step": result.best_step, "seconds": round(result.seconds, 1),
                "retrain": cfg.as_record(), "data": data["summary"]}
    new = save_checkpoint(result.model, out_path, training=training, metrics=result.metrics)
    return {"path": out_path, "model_id": new.model_id, "steps": result.steps, "seconds": round(result.seconds, 1),
            "parent": parent, "champion": meta.model_id}


@task(name="evaluate-models", persist_result=False)
def evaluate_models_task(champion_path: str, challenger_path: str, data: dict, config: dict) -> dict:
    """Both models on the same fixed evaluation pairs (and benchmark, when enabled)."""
    from deepssim.metric import load_checkpoint
    from deepssim.evaluation import build_eval_benchmark, evaluate_model, fixed_eval_set, scratch
    from deepssim.metric import ImageSet

    cfg = RetrainConfig.from_record(config)
    eval_images = ImageSet.load(data["eval"])
    ev = fixed_eval_set(eval_images, cfg.eval_pairs)
    out = {}
    with scratch() as tmp:
        bench = build_eval_benchmark(eval_images, Path(tmp), cfg.benchmark_per_kind) if cfg.benchmark_per_kind else None
        for name, path in (("champion", champion_path), ("challenger", challenger_path)):
            model, _ = load_checkpoint(path)
            out[name] = evaluate_model(model, ev, bench)
    get_run_logger().info("champion criterion %.4f, challenger %.4f",
                          out["champion"]["criterion"], out["challenger"]["criterion"])
    return out


@task(name="record-challenger", persist_result=False)
def record_challenger_task(db: str, challenger: dict, metrics: dict, decision: dict, wait_s: float) -> None:
    """Register the challenger with its metrics, parent and the decision's reason."""
    from deepssim.metric import read_meta
    from deepssim.store import record_model

    meta = read_meta(challenger["path"])
    with Store(db, wait_s=wait_s) as store:
        record_model(store, meta, challenger["path"], "challenger", challenger["parent"], decision["reason"],
                     metrics={"eval": metrics["challenger"], "champion_eval": metrics["champion"],
                              "champion_id": challenger["champion"], "decision": decision})


@task(name="reembed-cohorts", persist_result=False)
def reembed_cohorts_task(db: str, model_path: str, model_id: str, device: str, wait_s: float) -> dict:
    """Embed every registered cohort under ``model_id`` (only what is missing)."""
    from deepssim.metric import load_checkpoint
    from deepssim.metric import Embedder
    from deepssim.store import reembed_cohorts

    model, _ = load_checkpoint(model_path)
    embedder = Embedder(model, device=device)
    with Store(db, wait_s=wait_s) as store:
        done = reembed_cohorts(store, model_id, embedder.embed)
    get_run_logger().info("re-embedded %d image(s) in %d cohort(s)", sum(done.values()), len(done))
    return {"embedded": int(sum(done.values())), "cohorts": len(done)}


@task(name="promote-model", persist_result=False)
def promote_task(db: str, model_id: str, reason: str, wait_s: float) -> dict:
    """Switch the champion (refuses when a cohort is not embedded under the model)."""
    from deepssim.store import promote

    with Store(db, wait_s=wait_s) as store:
        return promote(store, model_id, reason)
