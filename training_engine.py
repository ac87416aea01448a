"""The one training engine behind the five `train_*.py` scripts.

AdamW with weight decay (a lower learning rate for a pretrained trunk), ReduceLROnPlateau on the
validation loss, early stopping, gradient clipping, seeds, mixed precision and channels_last on CUDA,
DistributedDataParallel under torchrun, MLflow tracking, and crash-safe resume: `last.pt` and
`best.pt` are written atomically every epoch, and rerunning the same command continues from the last
completed epoch with the same optimizer, scheduler, RNG state and MLflow run.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

import architectures
import data_handler
from metrics import binary_metrics
from model_store import atomic_write_bytes, atomic_write_json, sha256_of
from registry import get_spec

log = logging.getLogger("train")

ON_KAGGLE = Path("/kaggle/working").is_dir()


def build_parser(model_key: str, **defaults) -> argparse.ArgumentParser:
    """Command-line options shared by every train_*.py; `defaults` are the script's own."""
    spec = get_spec(model_key)
    p = argparse.ArgumentParser(description=f"Train the {spec.title} deepfake detector ({model_key}).")
    kaggle_data = "/kaggle/input" if ON_KAGGLE else None
    p.add_argument("--data-dir", default=defaults.get("data_dir", kaggle_data),
                   required=kaggle_data is None and "data_dir" not in defaults,
                   help="dataset folder (real/ + fake/, or with metadata.csv) or a metadata.csv file")
    p.add_argument("--output-dir", default=defaults.get("output_dir", "/kaggle/working/runs" if ON_KAGGLE else "runs"),
                   help="checkpoints go to OUTPUT_DIR/<model>/ (last.pt, best.pt)")
    p.add_argument("--epochs", type=int, default=defaults.get("epochs", 30))
    p.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 32))
    p.add_argument("--input-size", type=int, default=defaults.get("input_size", spec.default_input_size))
    p.add_argument("--lr", type=float, default=defaults.get("lr", 3e-4), help="learning rate of new layers")
    p.add_argument("--trunk-lr", type=float, default=defaults.get("trunk_lr", 1e-4),
                   help="learning rate of a pretrained trunk (lower: keep what ImageNet taught it)")
    p.add_argument("--weight-decay", type=float, default=defaults.get("weight_decay", 0.05))
    p.add_argument("--patience", type=int, default=defaults.get("patience", 5),
                   help="early stopping: epochs without a better validation loss")
    p.add_argument("--lr-patience", type=int, default=defaults.get("lr_patience", 2),
                   help="ReduceLROnPlateau patience (epochs)")
    p.add_argument("--warmup-steps", type=int, default=defaults.get("warmup_steps", 0),
                   help="linear learning-rate warm-up over this many optimiser steps (0: none); helps "
                        "transformers from scratch and keeps a pretrained body from being shaken at the start")
    p.add_argument("--clip-grad", type=float, default=5.0, help="max gradient norm (0 disables)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop after the epoch that would overrun this many minutes of this run")
    p.add_argument("--pretrained", action="store_true", help="start from timm's ImageNet weights (needs internet); "
                   "for the two custom models, from the offline MobileNetV2 trunk weights, and for swin with "
                   "--arch-arg stem=mobilenet_v2, that stem's)")
    p.add_argument("--init-weights", default=None, metavar="FILE",
                   help="start from local weights (.safetensors state dict, or a checkpoint of this engine)")
    p.add_argument("--sbi", type=float, default=0.0, metavar="P", nargs="?", const=0.5,
                   help="replace real training faces by self-blended pseudo-fakes with probability P")
    p.add_argument("--erase", type=float, default=0.0, metavar="P",
                   help="random erasing: blank one rectangle of a training face to the mean colour with "
                        "probability P (torchvision's RandomErasing; 0: off)")
    p.add_argument("--paired", action="store_true",
                   help="draw each real face and the fake made from it (the same group) into the same batch, "
                        "side by side (data_handler.PairedSampler); needs --batch-size even")
    p.add_argument("--teacher", default=None, metavar="NPZ",
                   help="distil from teacher logits (npz with 'paths' and 'logits' of the train split)")
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--consistency", type=float, default=0.0, metavar="W",
                   help="weight of a consistency term: each face is augmented twice (two box jitters, filters, "
                        "JPEG...) and the symmetric KL divergence between the two predictions is added to the "
                        "loss, so that a re-framed face keeps its score (issue 11)")
    p.add_argument("--consistency-form", choices=("kl", "relative"), default="kl",
                   help="kl: the symmetric KL divergence of the views' predictions (session 7; a model can "
                        "lower it by shrinking all its logits, which calibration undoes); relative: the "
                        "views' logit variance within each face over the batch's whole logit variance, "
                        "which no rescaling of the logits changes, so only agreeing views lower it")
    p.add_argument("--views", type=int, default=None,
                   help="augmented views of each face per step (default 2 with --consistency, else 1); "
                        "--views 2 --consistency 0 is the control arm with the same images and compute")
    p.add_argument("--views-differ", choices=("all", "framing", "nudge"), default="all",
                   help="all: each view is augmented independently; framing: the views share flip, colour, "
                        "JPEG and blur and differ only in the box jitter and resize filter, so a consistency "
                        "term asks for invariance to how the detector cut the face (issue 11); nudge: the "
                        "views share everything, the box too, but each after the first moves that box by up "
                        "to one pixel of the model's input (boxes a pixel apart: make bench's agreement)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep an exponential moving average of the weights (decay per step, e.g. 0.998); "
                        "it is what is validated, checkpointed and converted (the raw weights are "
                        "validated too, as raw_val_auc)")
    p.add_argument("--epoch-samples", type=int, default=None,
                   help="training samples per epoch (default: the whole train split); smaller values "
                        "validate and checkpoint more often")
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-val-samples", type=int, default=None)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cache-dir", default=None, help="where decoded crops are cached (default ~/.cache/deepfake-studio)")
    p.add_argument("--mlflow-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db"))
    p.add_argument("--experiment", default="deepfake-studio")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--log-samples", action="store_true",
                   help="each rank records the sample indices it trained on and its final weights' digest "
                        "(to check data sharding and weight sync under torchrun)")
    p.add_argument("--arch-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="architecture argument, e.g. variant=base for Swin-B")
    p.set_defaults(model=model_key)
    return p


def main(model_key: str, argv=None, **defaults) -> dict:
    """Entry point of every train_*.py; returns the final summary (also written as summary.json)."""
    args = build_parser(model_key, **defaults).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    return Trainer(args).run()


# ---------------------------------------------------------------------------------------------------
def _parse_arch_args(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                continue
        out[name] = value
    return out


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def _set_rng_state(state: dict) -> None:
    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))


def save_checkpoint(path: Path, payload: dict) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    # weights_only=True: our checkpoints hold tensors and plain Python values only.
    return torch.load(path, map_location="cpu", weights_only=True)


def _four_digits(value: float) -> float:
    """Four significant digits for the epoch log line: round(5e-5, 4) printed a learning rate of
    5e-5 as 0.0001, twice the real one."""
    return float(f"{value:.4g}")


def warmup_lr(target: float, step: int, steps: int) -> float:
    """Learning rate at optimiser step `step` (from 0) of a linear warm-up to `target` over `steps`."""
    return target if steps <= 0 else target * min(1.0, (step + 1) / steps)


class Trainer:
    def __init__(self, args):
        self.args = args
        self.spec = get_spec(args.model)
        self.distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if self.distributed:
            backend = "nccl" if args.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend=backend)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if args.device.startswith("cuda"):
                local = int(os.environ.get("LOCAL_RANK", 0))
                torch.cuda.set_device(local)
                args.device = f"cuda:{local}"
        else:
            self.rank, self.world = 0, 1
        self.is_main = self.rank == 0
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if args.threads:
            torch.set_num_threads(args.threads)
        self.out_dir = Path(args.output_dir) / args.model
        self.arch_args = _parse_arch_args(args.arch_arg)
        if not 0.0 <= args.erase <= 1.0:
            raise SystemExit(f"--erase is a probability between 0 and 1, not {args.erase}")
        if args.paired and args.batch_size % 2:
            raise SystemExit(f"--paired keeps each pair in one batch: --batch-size must be even, not {args.batch_size}")
        self.views = args.views or (2 if args.consistency else 1)
        if args.consistency and self.views < 2:
            raise SystemExit("--consistency needs at least two views of each face (--views 2)")
        if args.views_differ != "all" and self.views < 2:
            # with one view there is nothing for the views to share, and the option would be ignored
            raise SystemExit(f"--views-differ {args.views_differ} needs at least two views of each face (--views 2)")

    # -- data -------------------------------------------------------------------------------------
    def _load_data(self):
        a = self.args
        records = data_handler.load_records(a.data_dir, seed=a.seed)
        self.dataset_name = Path(a.data_dir).resolve().name if Path(a.data_dir).is_dir() else Path(a.data_dir).stem
        cache_size = max(a.input_size, 128) if not self.cuda else a.input_size
        train = data_handler.load_split(records, "train", cache_size, a.cache_dir, a.max_train_samples, a.seed)
        val = data_handler.load_split(records, "val", cache_size, a.cache_dir, a.max_val_samples, a.seed)
        self.skipped = train.skipped + val.skipped
        log.info("data: %d train, %d val images (%d unreadable skipped) from %s",
                 len(train.labels), len(val.labels), self.skipped, a.data_dir)
        teacher = None
        if a.teacher:
            with np.load(a.teacher, allow_pickle=False) as t:
                by_path = dict(zip(t["paths"].tolist(), t["logits"].astype(np.float32)))
            teacher = np.array([by_path.get(p, np.nan) for p in train.paths], np.float32)
            log.info("distilling from %s (%d/%d train images have teacher logits)",
                     a.teacher, int(np.isfinite(teacher).sum()), len(teacher))
        mean, std = self.spec.normalisation(self.arch_args)
        self.train_set = data_handler.FaceCropDataset(
            train, data_handler.train_transform(a.input_size, mean, std, erase=a.erase),
            sbi_probability=a.sbi, seed=a.seed, teacher_logits=teacher, views=self.views,
            view_difference=a.views_differ)
        self.val_set = data_handler.FaceCropDataset(
            val, data_handler.eval_transform(a.input_size, mean, std))
        self.n_train, self.n_val = len(train.labels), len(val.labels)
        if a.paired:     # found once; each epoch's PairedSampler draws from them
            self.train_pairs = data_handler.real_fake_pairs(train.labels, train.groups)
            if len(self.train_pairs) == 0:
                raise SystemExit(data_handler.NO_PAIRS_MESSAGE)
            log.info("paired sampling: %d real/fake pairs (%d of %d training faces)", len(self.train_pairs),
                     2 * len(self.train_pairs), self.n_train)

    def _train_loader(self, epoch: int) -> DataLoader:
        a = self.args
        self.train_set.set_epoch(epoch)
        generator = torch.Generator().manual_seed(a.seed * 1000 + epoch)
        n = a.epoch_samples or self.n_train
        if a.paired:
            sampler = data_handler.PairedSampler(self.train_pairs, min(n, self.n_train), generator,
                                                 self.rank, self.world)
        elif self.distributed:
            sampler = DistributedSampler(self.train_set, num_replicas=self.world, rank=self.rank,
                                         shuffle=True, seed=a.seed, drop_last=True)
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_set, replacement=False, num_samples=min(n, self.n_train),
                                    generator=generator)
        return DataLoader(self.train_set, batch_size=a.batch_size, sampler=sampler, drop_last=True,
                          num_workers=a.num_workers, pin_memory=self.cuda, persistent_workers=False)

    def _val_loader(self) -> DataLoader:
        sampler = (DistributedSampler(self.val_set, num_replicas=self.world, rank=self.rank, shuffle=False)
                   if self.distributed else SequentialSampler(self.val_set))
        return DataLoader(self.val_set, batch_size=max(self.args.batch_size, 64), sampler=sampler,
                          num_workers=self.args.num_workers)

    # -- model ------------------------------------------------------------------------------------
    def _build_model(self):
        a = self.args
        pretrained_trunk = a.pretrained and self.spec.trunk_prefix is not None
        model = self.spec.build(a.input_size, pretrained=a.pretrained, **self.arch_args)
        if a.init_weights:
            self._load_init_weights(model, a.init_weights)
            # Recorded so that a conversion can name the converted model this run continued (its
            # manifest's training then carries the earlier phases too, convert_models.lineage).
            self.init_weights_sha256 = sha256_of(a.init_weights)
        model.to(self.device)
        if self.cuda:
            model = model.to(memory_format=torch.channels_last)
        trunk, rest = [], []
        prefix = self.spec.trunk_prefix if (pretrained_trunk or a.init_weights) else None
        for name, param in model.named_parameters():
            (trunk if prefix and name.startswith(prefix) else rest).append(param)
        groups = [{"params": rest, "lr": a.lr}]
        if trunk:
            groups.append({"params": trunk, "lr": a.trunk_lr})
        self.optimizer = torch.optim.AdamW(groups, weight_decay=a.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=0.3,
                                                                    patience=a.lr_patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda)
        self.model = model
        self.ema = None
        if a.ema:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=a.ema)
        self.net = (torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.cuda else None) if self.distributed else model)

    @staticmethod
    def _load_init_weights(model, path: str) -> None:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = load_checkpoint(Path(path))
            state = state.get("model", state)
        own = model.state_dict()
        # Weights from another input size: the position embeddings are resampled to this grid.
        state, resampled = architectures.resample_position_embeddings(state, own)
        usable = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(usable, strict=False)
        log.info("init weights: %d/%d tensors loaded from %s%s", len(usable), len(own), path,
                 f" ({', '.join(resampled)} resampled to this input size)" if resampled else "")

    # -- loops ------------------------------------------------------------------------------------
    def _loss(self, logits, labels, teacher):
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if self.args.teacher:
            have = torch.isfinite(teacher)
            if have.any():
                soft = torch.sigmoid(teacher[have])
                distill = F.binary_cross_entropy_with_logits(logits[have], soft)
                w = self.args.distill_weight
                loss = (1 - w) * loss + w * distill
        return loss

    @staticmethod
    def consistency_loss(logits: torch.Tensor) -> torch.Tensor:
        """Mean symmetric KL divergence between the Bernoulli predictions of every pair of views of a
        face; `logits` has shape (faces, views). For two views it is (p1 - p2) * (z1 - z2): it is
        zero when the views agree, and small when both are confidently on the same side (where the
        probabilities, which users see, hardly differ even if the logits do)."""
        probs = torch.sigmoid(logits)
        dp = probs.unsqueeze(2) - probs.unsqueeze(1)
        dz = logits.unsqueeze(2) - logits.unsqueeze(1)
        pairs = logits.shape[1] * (logits.shape[1] - 1)
        return (dp * dz).sum(dim=(1, 2)).mean() / pairs

    @staticmethod
    def relative_consistency_loss(logits: torch.Tensor) -> torch.Tensor:
        """The share of the batch's logit variance that lies between the views of one face; `logits`
        has shape (faces, views). It is 0 when every face's views agree and 1 when the faces differ no
        more than their views, and it does not change when all logits are multiplied by a constant:
        calibration divides the logits by a fitted temperature, so what users see moves with this ratio,
        not with the KL divergence, which a model lowers by shrinking its logits (session 7)."""
        within = logits.var(dim=1, unbiased=False).mean()
        total = logits.flatten().var(unbiased=False)
        return within / (total + 1e-6)

    def _train_epoch(self, epoch: int) -> dict:
        self.net.train()
        loader = self._train_loader(epoch)
        if self.args.log_samples:
            atomic_write_json(self.out_dir / f"samples-rank{self.rank}-epoch{epoch + 1}.json",
                              {"rank": self.rank, "indices": [int(i) for i in loader.sampler]})
        total, count, correct, disagreement, relative = 0.0, 0, 0, 0.0, 0.0
        start = time.time()
        for step, (images, labels, teacher) in enumerate(loader):
            self._warm_up(epoch * len(loader) + step)
            if self.views > 1:  # (faces, views, C, H, W) -> one batch, a face's views side by side
                images = images.flatten(0, 1)
                labels, teacher = labels.repeat_interleave(self.views), teacher.repeat_interleave(self.views)
            images = images.to(self.device, non_blocking=True)
            if self.cuda:
                images = images.to(memory_format=torch.channels_last)
            labels, teacher = labels.to(self.device), teacher.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.cuda):
                logits = self.net(images).squeeze(1).float()
            loss = self._loss(logits, labels, teacher)
            if self.views > 1:
                # Measured in the control arm too (--views 2 without --consistency), so the two compare.
                divergence = self.consistency_loss(logits.view(-1, self.views))
                shared = self.relative_consistency_loss(logits.view(-1, self.views))
                disagreement += float(divergence.detach()) * len(labels)
                relative += float(shared.detach()) * len(labels)
                if self.args.consistency:
                    term = shared if self.args.consistency_form == "relative" else divergence
                    loss = loss + self.args.consistency * term
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.args.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.args.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model, step=epoch * len(loader) + step)
            total += float(loss.detach()) * len(labels)
            count += len(labels)
            correct += int(((logits > 0).float() == labels).sum())
            if self.is_main and (step + 1) % 50 == 0:
                log.info("epoch %d step %d/%d loss %.4f%s (%.1f img/s)", epoch + 1, step + 1, len(loader),
                         total / count,
                         f" views: KL {disagreement / count:.4f}, variance share {relative / count:.4f}"
                         if self.views > 1 else "", count * self.world / (time.time() - start))
        if self.distributed:
            # DDP keeps parameters in sync but each rank's last forward updated its own BatchNorm
            # statistics: take rank 0's so every rank validates and saves the same model.
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
            if self.ema is not None:  # the average took each rank's own statistics too
                for buffer in self.ema.module.buffers():
                    dist.broadcast(buffer, src=0)
        figures = {"train_loss": total / max(count, 1), "train_accuracy": correct / max(count, 1),
                   "train_images_per_s": count * self.world / max(time.time() - start, 1e-9)}
        if self.views > 1:
            figures["train_view_divergence"] = disagreement / max(count, 1)
            figures["train_view_variance_share"] = relative / max(count, 1)
        return figures

    def _warm_up(self, global_step: int) -> None:
        """Linear warm-up of every parameter group's learning rate over the first --warmup-steps
        steps; the target rate is kept in the group so a resumed run warms up to the same value."""
        steps = self.args.warmup_steps
        if not steps or global_step > steps:
            return
        for group in self.optimizer.param_groups:
            target = group.setdefault("warmup_target_lr", group["lr"])
            group["lr"] = warmup_lr(target, global_step, steps)

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights a run validates, checkpoints as `model` and converts: the average if --ema."""
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def predict_val(self, model: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Validation logits and labels of `model` (default: the kept model), gathered from every rank."""
        model = self.kept_model if model is None else model
        model.eval()
        logits, labels = [], []
        for images, y, _ in self._val_loader():
            images = images.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.cuda):
                logits.append(model(images).squeeze(1).float().cpu())
            labels.append(y)
        logits_np = torch.cat(logits).numpy() if logits else np.zeros(0, np.float32)
        labels_np = torch.cat(labels).numpy() if labels else np.zeros(0, np.float32)
        if self.distributed:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, (logits_np, labels_np))
            logits_np = np.concatenate([g[0] for g in gathered])
            labels_np = np.concatenate([g[1] for g in gathered])
        return logits_np, labels_np

    def _validate(self) -> dict:
        logits, labels = self.predict_val()
        loss = float(F.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(labels)))
        m = binary_metrics(labels, 1 / (1 + np.exp(-logits)))
        figures = {"val_loss": loss, "val_accuracy": m["accuracy"], "val_auc": m["auc"], "val_ap": m["ap"],
                   "val_eer": m["eer"], "_logits": logits, "_labels": labels}
        if self.ema is not None:  # the raw weights beside their average: what the averaging changed
            raw_logits, _ = self.predict_val(self.model)
            figures["raw_val_auc"] = binary_metrics(labels, 1 / (1 + np.exp(-raw_logits)))["auc"]
        return figures

    # -- mlflow -----------------------------------------------------------------------------------
    def _mlflow_start(self, run_id: str | None) -> str | None:
        if self.args.no_mlflow or not self.is_main:
            return None
        import mlflow

        mlflow.set_tracking_uri(self.args.mlflow_uri)
        mlflow.set_experiment(self.args.experiment)
        if run_id:
            mlflow.start_run(run_id=run_id)
        else:
            name = f"{self.args.model}-{self.dataset_name}-{self.args.input_size}px"
            mlflow.start_run(run_name=name)
            params = {k: v for k, v in vars(self.args).items() if k not in ("arch_arg",)}
            params.update(n_train=self.n_train, n_val=self.n_val, world_size=self.world,
                          skipped_files=self.skipped, **{f"arch_{k}": v for k, v in self.arch_args.items()})
            mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
        return mlflow.active_run().info.run_id

    def _mlflow_log(self, metrics: dict, epoch: int) -> None:
        if self.mlflow_run:
            import mlflow
            mlflow.log_metrics({k: v for k, v in metrics.items()
                                if not k.startswith("_") and isinstance(v, float) and math.isfinite(v)}, step=epoch)

    def _mlflow_finish(self, best_val: dict | None) -> None:
        if not self.mlflow_run:
            return
        import mlflow
        if best_val is not None:
            for name, fig in _evaluation_figures(best_val["_labels"], best_val["_logits"]).items():
                mlflow.log_figure(fig, f"{name}.png")
        if (self.out_dir / "best.pt").exists():
            mlflow.log_artifact(str(self.out_dir / "best.pt"), artifact_path="checkpoint")
        mlflow.end_run()

    # -- main loop --------------------------------------------------------------------------------
    def run(self) -> dict:
        a = self.args
        torch.manual_seed(a.seed + self.rank)
        np.random.seed(a.seed + self.rank)
        random.seed(a.seed + self.rank)
        self._load_data()
        self._build_model()
        start_epoch, best_auc, best_loss, stale, run_id, elapsed_before = 0, -1.0, math.inf, 0, None, 0.0
        history: list[dict] = []
        last_path, best_path = self.out_dir / "last.pt", self.out_dir / "best.pt"
        if last_path.exists():
            ckpt = load_checkpoint(last_path)
            # With --ema, "model" holds the average and "raw_model" the weights being trained.
            self.model.load_state_dict(ckpt.get("raw_model", ckpt["model"]))
            if self.ema is not None:
                self.ema.module.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            start_epoch, best_auc, best_loss = ckpt["epoch"] + 1, ckpt["best_auc"], ckpt["best_loss"]
            stale, run_id, history = ckpt["stale"], ckpt.get("mlflow_run_id"), json.loads(ckpt["history"])
            elapsed_before = ckpt.get("elapsed_s", 0.0)
            if ckpt.get("world") == self.world:
                _set_rng_state(ckpt["rng"][self.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
            if self.is_main:
                log.info("resuming from %s after epoch %d", last_path, start_epoch)
        self.mlflow_run = self._mlflow_start(run_id)
        started = time.time() - elapsed_before
        best_val = None
        stop_reason = "epochs done"
        for epoch in range(start_epoch, a.epochs):
            if a.time_budget and time.time() - started >= a.time_budget * 60:
                stop_reason = f"time budget of {a.time_budget} min reached"
                break
            epoch_start = time.time()
            metrics = self._train_epoch(epoch)
            metrics.update(self._validate())
            metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
            self.scheduler.step(metrics["val_loss"])
            improved = metrics["val_auc"] > best_auc if math.isfinite(metrics["val_auc"]) else best_auc < 0
            if metrics["val_loss"] < best_loss - 1e-4:
                best_loss, stale = metrics["val_loss"], 0
            else:
                stale += 1
            epoch_s = time.time() - epoch_start
            row = {k: v for k, v in metrics.items() if not k.startswith("_")}
            row.update(epoch=epoch + 1, epoch_s=round(epoch_s, 1))
            history.append(row)
            rng = _rng_state()
            if self.distributed:
                gathered = [None] * self.world
                dist.all_gather_object(gathered, rng)
                rng = gathered
            if self.is_main:
                log.info("epoch %d/%d %s", epoch + 1, a.epochs, json.dumps(
                    {k: _four_digits(v) if isinstance(v, float) else v for k, v in row.items()}))
                self._mlflow_log(metrics, epoch + 1)
                payload = {"model": self.kept_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                           "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                           "epoch": epoch, "best_auc": max(best_auc, metrics["val_auc"]) if improved else best_auc,
                           "best_loss": best_loss, "stale": stale, "mlflow_run_id": self.mlflow_run,
                           "history": json.dumps(history), "rng": rng, "world": self.world,
                           "elapsed_s": time.time() - started, "config": json.dumps(self._config())}
                if self.ema is not None:
                    payload["raw_model"] = self.model.state_dict()
                if improved:
                    best_auc, best_val = metrics["val_auc"], metrics
                    save_checkpoint(best_path, payload)
                save_checkpoint(last_path, payload)
            elif improved:
                best_auc = metrics["val_auc"]
            if stale >= a.patience:
                stop_reason = f"early stop: no better validation loss in {a.patience} epochs"
                break
            elapsed = time.time() - started
            if a.time_budget and elapsed + epoch_s > a.time_budget * 60:
                stop_reason = f"time budget of {a.time_budget} min reached"
                break
        summary = {"model": a.model, "best_val_auc": best_auc, "epochs_run": len(history),
                   "stop_reason": stop_reason, "mlflow_run_id": self.mlflow_run, "elapsed_s": round(time.time() - started, 1),
                   "history": history, "checkpoint": str(best_path), "config": self._config()}
        if self.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
            log.info("done (%s); best val AUC %.4f; checkpoint %s", stop_reason, best_auc, best_path)
            self._mlflow_finish(best_val)
        if self.args.log_samples:
            import hashlib
            digest = hashlib.sha256()
            for name, tensor in sorted(self.kept_model.state_dict().items()):
                digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
            atomic_write_json(self.out_dir / f"weights-rank{self.rank}.json", {"sha256": digest.hexdigest()})
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()
        return summary

    def _config(self) -> dict:
        a = self.args
        return {"model": a.model, "input_size": a.input_size, "arch_args": self.arch_args,
                "data_dir": str(a.data_dir), "dataset": self.dataset_name, "n_train": self.n_train,
                "n_val": self.n_val, "epoch_samples": a.epoch_samples or self.n_train, "batch_size": a.batch_size, "lr": a.lr, "trunk_lr": a.trunk_lr,
                "weight_decay": a.weight_decay, "warmup_steps": a.warmup_steps, "pretrained": a.pretrained, "sbi": a.sbi, "paired": a.paired,
                "erase": a.erase, "views": self.views, "consistency": a.consistency,
                "consistency_form": a.consistency_form, "views_differ": a.views_differ, "ema": a.ema,
                "teacher": a.teacher, "init_weights": a.init_weights,
                "init_weights_sha256": getattr(self, "init_weights_sha256", None), "seed": a.seed, "world_size": self.world,
                "device": self.device.type,
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}


def _evaluation_figures(labels: np.ndarray, logits: np.ndarray) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    probs = 1 / (1 + np.exp(-logits))
    roc, ax = plt.subplots(figsize=(4, 4))
    RocCurveDisplay.from_predictions(labels, probs, ax=ax, name="val")
    cm, ax2 = plt.subplots(figsize=(4, 4))
    ConfusionMatrixDisplay.from_predictions(labels.astype(int), (probs >= 0.5).astype(int),
                                            display_labels=["real", "fake"], ax=ax2)
    return {"roc_curve": roc, "confusion_matrix": cm}
