"""``gpumix simulate``: a discrete-time simulation of a heterogeneous GPU cluster.

``loadgen`` draws the load, ``cluster`` models node pools, pods, the scheduler and
the router, ``engine`` runs the controller and the autoscalers step by step,
``scenario`` reads scenario files, ``planning`` links to the optimizer, ``runner``
runs every variant of a scenario, ``headline`` checks its claim and ``report``
writes plots and summaries.  See docs/simulate.md.
"""
