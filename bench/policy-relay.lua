-- Benchmark policy: end to end (issue 7, scenario 4): durable reception,
-- then delivery by kumo-qmgr to a sink on loopback.
-- bench/run sets BENCH_DIR (spools and logs), BENCH_PORT (the listener) and
-- BENCH_SINK_PORT (the sink every message is relayed to).
local kumo = require 'kumo'
local dir = assert(os.getenv('BENCH_DIR'), 'BENCH_DIR not set')
local port = assert(os.getenv('BENCH_PORT'), 'BENCH_PORT not set')
local sink = assert(os.getenv('BENCH_SINK_PORT'), 'BENCH_SINK_PORT not set')

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = dir .. '/spool/data' }
  kumo.define_spool { name = 'meta', path = dir .. '/spool/meta' }
  kumo.configure_local_logs { log_dir = dir .. '/log' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:' .. port,
    hostname = 'bench.localhost',
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { smtp = { mx_list = { '127.0.0.1:' .. sink } } },
    retry_interval = '10 seconds',
  }
end)

kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  return kumo.make_egress_path {
    enable_tls = 'Disabled',
    prohibited_hosts = {},   -- the sink is on loopback
  }
end)
