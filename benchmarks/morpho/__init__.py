"""The morphogenesis experiment: does growing a model while it trains pay, at matched
training compute, against the alternatives its user has?

One module per concern: `data` (Fashion-MNIST splits and seeded batch order), `hosts`
(the MLP and CNN host families and their sized variants), `flops` (FLOP and wall-time
accounting), `loop` (the one training loop every arm uses), `growth` (policy sources that
germinate on a schedule: random growth and fixed schedules), `arms` (each arm of the
experiment), `gromo_arm` (the GroMo peer), `report` (statistics, JSON, Markdown, plot) and
`cli` (the command line of benchmarks/morphogenesis.py).
"""
