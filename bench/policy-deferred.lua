-- Benchmark policy: scenario 2, as policy-durable.lua with deferred_spool.
-- KumoMTA may then acknowledge before the spool is flushed; this relay
-- accepts the flag and (in this version) still stores durably.
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
