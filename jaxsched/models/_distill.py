"""Knowledge distillation loss (Hinton, Vinyals & Dean 2015)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["distillation_loss"]


def distillation_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  labels: jax.Array,
  *,
  temperature: float,
  alpha: float,
) -> jax.Array:
  """Mean of alpha * T^2 * CE(soft teacher, soft student) + (1 - alpha) * CE(labels, student).

  The soft term is the cross-entropy between the teacher's and the student's softmax at
  temperature T; it is scaled by T^2 so its gradients keep the same magnitude as the hard term's
  when T changes. The hard term is the ordinary cross-entropy at T = 1. The teacher gets no
  gradient.

  Args:
    student_logits: [batch, classes].
    teacher_logits: [batch, classes].
    labels: Integer class labels [batch].
    temperature: T > 0.
    alpha: Weight of the soft term, in [0, 1].

  Returns:
    The scalar mean loss.
  """
  if not temperature > 0:
    raise ValueError(f"{temperature=} must be > 0")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"{alpha=} must be in [0, 1]")
  if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
    raise ValueError(
      f"{student_logits.shape=} and {teacher_logits.shape=} must be equal [batch, classes]"
    )
  if labels.shape != student_logits.shape[:1]:
    raise ValueError(f"{labels.shape=} must be ({student_logits.shape[0]},)")
  t = temperature
  soft_targets = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits) / t)
  soft = -jnp.sum(soft_targets * jax.nn.log_softmax(student_logits / t), axis=-1)
  logp = jax.nn.log_softmax(student_logits)
  hard = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  return jnp.mean(alpha * t * t * soft + (1.0 - alpha) * hard)
