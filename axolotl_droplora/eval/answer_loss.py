"""Held-out answer loss: the teacher-forced negative log-likelihood of the answer tokens.

    answer_nll(model, tokenizer, prompts, answers)  -> one mean NLL (nats/token) per question

The study's low-variance metric: unlike greedy accuracy (one bit per question) it moves with
every answer token's probability. Each sequence is the prompt's tokens, then the answer's
(tokenized on its own, as the completion is in training) and EOS, which SFT trains too; the NLL
is averaged over the answer tokens and EOS of each question, so long and short answers count
alike. The model runs in eval mode (no LoRA dropout, no rank dropout) and its mode is restored.
"""

from __future__ import annotations

import torch


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """(token ids of prompt + answer + EOS, how many of them are the prompt's)."""
    prompt_ids = tokenizer(prompt).input_ids
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    if tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    if not answer_ids:
        raise ValueError(f"answer {answer!r} has no tokens")
    return prompt_ids + answer_ids, len(prompt_ids)


@torch.no_grad()
def answer_nll(model, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 32) -> list[float]:
    """Mean NLL of each answer's tokens given its prompt, one float per question."""
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    losses = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = [
                encode(tokenizer, p, a)
                for p, a in zip(prompts[start : start + batch_size], answers[start : start + batch_size])
            ]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.full((len(encoded), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            scored = torch.zeros(len(encoded), width, dtype=torch.bool)  # positions whose token is an answer token
            for row, (tokens, n_prompt) in enumerate(encoded):  # right padding: positions stay 0..len-1
                ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, : len(tokens)] = 1
                scored[row, n_prompt : len(tokens)] = True
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = ids[:, 1:].to(device)
            token_nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            weights = scored[:, 1:].to(device).float()
            losses += ((token_nll * weights).sum(-1) / weights.sum(-1)).tolist()
    finally:
        model.train(was_training)
    return losses
