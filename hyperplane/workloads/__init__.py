"""What runs inside a lab: the functions' code (the Lambda Runtime API in each execution
environment) and the hosts' services.

One process per lab, the workloads service (``python -m hyperplane.workloads --name LAB``,
started by ``lab up`` beside the data path), holds them:

    service       the process: invoke (Lambda's frontend), its control socket, the hosts
    environment   one execution environment: cold/warm, init, an invocation, timeout, crash
    runtime_api   the Runtime API (2018-06-01) an environment's runtime talks to
    runtimes      what a runtime process is (a bootstrap, or python3.N) and its files
    pyruntime     the project's Python runtime client (stdlib only; runs as the function)
    logs          CloudWatch-shaped logs per environment, read back merged by time
    hosts         a host's ``command``: started in its namespace, supervised, stopped
"""
