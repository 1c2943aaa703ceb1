"""Graph-to-graph and graph-to-plan passes, run in order by the compiler."""
