"""Run by tests/test_fsdp2.py under torchrun with 2 CPU processes (gloo): the tiny model sharded with torch's
fully_shard (FSDP2), the pairwise Cringe loss on each rank's half of the pairs, plain and chunked (or, with argv[2]
"shared", chunked on prefix-shared rows), against the unsharded model on all pairs in one process. Writes the
largest differences as JSON to argv[1]."""

import json
import os
import sys

import torch
import torch.distributed as dist


def main(out_path: str, variant: str = "plain") -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from cringe import chunked as C
    from cringe import losses as L
    from cringe import prefix_sharing as P
    from cringe.data import Collator, prepare
    from cringe.models import build_tiny_model, build_tiny_tokenizer
    from cringe.trainer import whole_head_weight

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    answers = [
        (" yes", " no, not at all"),
        (" great, really great stuff", " bad"),
        (" fine", " awful, awful"),
        (" good", " terrible and long answer"),
    ]
    rows = prepare(
        [{"prompt": f"Q{i}?", "chosen": c, "rejected": r} for i, (c, r) in enumerate(answers)],
        tokenizer,
        kind="pairwise",
    ).rows
    collate = Collator(tokenizer.pad_token_id)
    full_batch = collate(rows)
    num_items = (full_batch["labels"][:, 1:] != L.IGNORE_INDEX).sum()  # every rank divides by the global count
    local = collate(rows[rank::world])
    local_shared = P.build_shared_rows(rows[rank::world], tokenizer.pad_token_id)

    def plain(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        half = logits.shape[0] // 2
        return L.pairwise_cringe_loss(
            logits[:half],
            labels[:half],
            logits[half:],
            labels[half:],
            alpha=0.5,
            k=1,
            margin=100.0,
            num_items=num_items,
        ).loss

    def chunked_loss(model, hidden, targets, seq, pairs):
        head_seen.append(type(model.lm_head.weight).__name__)  # before whole_head_weight
        weight = whole_head_weight(model, model.lm_head)
        loss, _ = C.pairwise_cringe_loss(
            hidden, weight, None, targets, seq, pairs, alpha=0.5, k=1, margin=100.0, num_items=num_items
        )
        return loss

    def chunked(model, batch):
        captured = {}
        handle = model.model.register_forward_hook(lambda m, a, out: captured.update(h=out.last_hidden_state))
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            logits_to_keep=torch.empty(0, dtype=torch.long),
        )
        handle.remove()
        labels = batch["labels"][:, 1:]
        mask = labels != L.IGNORE_INDEX
        seq = torch.arange(labels.shape[0]).unsqueeze(-1).expand_as(labels)[mask]
        return chunked_loss(model, captured["h"][:, :-1][mask], labels[mask], seq, labels.shape[0] // 2)

    def shared(model, batch):
        hidden, targets, seq = P.answer_hidden(model, batch)
        return chunked_loss(model, hidden, targets, seq, int(batch["num_sequences"]) // 2)

    def build(tied: bool):
        model = build_tiny_model(tokenizer)
        if not tied:  # an untied head: its gradient comes from the loss alone, not also from the embedding
            model.config.tie_word_embeddings = False
            model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        return model

    result, head_seen = {}, []
    mesh = init_device_mesh("cpu", (world,))
    paths = (("shared", shared),) if variant == "shared" else (("plain", plain), ("chunked", chunked))
    cases = [(p, t, r) for t in (True, False) for r in (False, True) for p in paths]
    for (name, path), tied, reshard in cases:
        reference = build(tied)
        ref_loss = plain(reference, full_batch)
        ref_loss.backward()
        ref_grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
        model = build(tied)
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        # reshard_after_forward on the root: the head is a sharded DTensor when the chunked loss reads it (FSDP2
        # keeps the root's parameters unsharded after forward by default, and then the head is whole).
        fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
        sharded = all(isinstance(p, DTensor) for p in model.parameters())
        loss = path(model, local_shared if name == "shared" else local)
        # The trainer's convention: each rank's loss is over the global count, times the number of ranks, since
        # FSDP averages the ranks' gradients.
        (loss * world).backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
        key = f"{name}, {'tied' if tied else 'untied'} head, root {'resharded' if reshard else 'kept whole'} after forward"
        result[key] = {
            "sharded": sharded,
            "loss_diff": abs(total.item() - ref_loss.item()),
            "grad_diff": max((grads[n] - ref_grads[n]).abs().max().item() for n in ref_grads),
            "grad_scale": max(ref_grads[n].abs().max().item() for n in ref_grads),
        }
    result["head_types_seen_by_the_chunked_loss"] = head_seen
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)
    # No rank tears gloo down while its peer may still be taking in the last collective's messages. Once in CI
    # (and in none of 35 runs on a 2-core dev machine) a rank aborted with "terminate called without an active
    # exception", which is a worker thread destroyed while running.
    dist.barrier()
    dist.destroy_process_group()
    # Nor a Python shutdown: gloo's worker threads can still hold tensors while the interpreter finalises, and
    # freeing them then aborts the process. Everything this worker checks is in its file by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(*sys.argv[1:])
