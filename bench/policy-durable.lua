-- Benchmark policy: durable reception (issue 7, scenario 1).
-- bench/run sets BENCH_DIR (spools and logs) and BENCH_PORT (loopback port).
-- No event handlers: nothing but the listener, spools and logs.
local kumo = require 'kumo'
local dir = assert(os.getenv('BENCH_DIR'), 'BENCH_DIR not set')
local port = assert(os.getenv('BENCH_PORT'), 'BENCH_PORT not set')

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = dir .. '/spool/data' }
  kumo.define_spool { name = 'meta', path = dir .. '/spool/meta' }
  kumo.configure_local_logs { log_dir = dir .. '/log' }
  -- Reception only: the queue manager's resolver is a closed loopback port,
  -- so every message stays spooled (one TransientFailure record each)
  -- instead of being delivered or bounced during the measurement.
  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' } }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:' .. port,
    hostname = 'bench.localhost',
    -- relay_hosts: the default (127.0.0.1, ::1)
  }
end)
