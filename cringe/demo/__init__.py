"""`cringe demo`: the paper's comparison on the sentiment testbed, offline on a CPU (pipeline), with the opt-in
RLOO row through TRL (online, which also trains GRPO for bench/research/instructions_compare.py). The report it writes comes from cringe.report, as for any run."""
