"""The proxy benchmark behind `bench/run.py`, one module per concern:

  processes  starting and stopping what the run needs, their CPU time, waiting until they answer
  targets    the servers wrk loads (nginx from the config files in nginx/, the bare aiohttp proxy,
             `gateway serve`) and the Redis database the Redis-backed gateway uses
  seeding    the benchmark's databases and rows: host rows through tests/factories.py, the plugin
             through the gateway's own API, the 10,000-routes table
  measure    wrk runs, alternating rounds, medians, the gateway's counters and log
  profile    py-spy recordings and their summaries
  report     RESULTS.md, the ratio table
  phases     the run itself: what starts when, which rounds, the cleanup
  cli        the options and the entry point
"""
