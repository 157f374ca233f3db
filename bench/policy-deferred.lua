-- Benchmark policy: scenario 2, as policy-durable.lua with deferred_spool.
-- An accepted message is answered 250 once kumo-qmgr holds it in memory; it
-- is written to the spool only at its first transient failure (or at
-- shutdown).  So that it stays in memory, bench/run gives this policy a
-- next hop that takes every message: the smtp-sink of the same run.
local kumo = require 'kumo'
local dir = assert(os.getenv('BENCH_DIR'), 'BENCH_DIR not set')
local port = assert(os.getenv('BENCH_PORT'), 'BENCH_PORT not set')

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = dir .. '/spool/data' }
  kumo.define_spool { name = 'meta', path = dir .. '/spool/meta' }
  kumo.configure_local_logs { log_dir = dir .. '/log' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:' .. port,
    hostname = 'bench.localhost',
    deferred_spool = true,
  }
end)

-- A deferred_spool message lives in the queue manager's memory until it is
-- delivered (here to the smtp-sink of the same run, BENCH_SINK_PORT) or
-- fails once; without a sink it would be spooled at its first failure.
local sink = os.getenv('BENCH_SINK_PORT')
if sink then
  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    return kumo.make_queue_config { protocol = { smtp = { mx_list = { '127.0.0.1:' .. sink } } } }
  end)
  kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
    return kumo.make_egress_path { enable_tls = 'Disabled', prohibited_hosts = {} }
  end)
end
