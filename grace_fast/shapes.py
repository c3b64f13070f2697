"""The canonical shapes of docs/method.md ("Canonical shapes"): the one list that the tests and benchmarks of the
ops take their problem sizes from.

OT_PROBLEMS: (B, N, M, D), B problems of N text tokens against M visual tokens of D features.
CLASS_PROMPT_PROBLEMS: (B, C, N, M, D), B clips each against C class prompts of N tokens (C = 7: DFEW's classes).
MOTION_TOKENS: (B, T', H', W', D), the VideoMAE tokens X of the motion op.

>>> OT_PROBLEMS["paper-rho0.5"]
(32, 77, 784, 512)
>>> {name: (B, N, M) for name, (B, N, M, _) in OT_PROBLEMS.items()}["low-latency"]
(1, 77, 784)
"""

OT_PROBLEMS = {
    "paper-rho0.5": (32, 77, 784, 512),
    "paper-all-tokens": (32, 77, 1568, 512),
    "long-clip-64f": (8, 77, 3136, 512),
    "low-latency": (1, 77, 784, 512),
}
CLASS_PROMPT_PROBLEMS = {
    "class-prompts-train": (32, 7, 32, 784, 512),
    "class-prompts-latency": (1, 7, 32, 784, 512),
}
MOTION_TOKENS = {
    "16-frames": (32, 8, 14, 14, 768),
    "64-frames": (8, 32, 14, 14, 768),
}
