# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7);

run_tests();

__DATA__

=== TEST 1: the completion socket lives in a private 0700 directory, gone once the driver connects
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local rt = require("resty_async_core").__rt
            local path = assert(rt.path())
            local dir = path:match("^(.*)/[^/]+$")
            local p = io.popen("stat -c '%a %U' " .. dir)
            local mode = p:read("*l")
            p:close()
            ngx.say("dir: ", mode, " name ok: ",
                    dir:find("/resty%-async%.%d+%.[%w]+$") ~= nil)
            ngx.say(async.sleep(0.01))
            p = io.popen("ls -d " .. dir .. " 2>/dev/null | wc -l")
            ngx.say("dir left after connect: ", p:read("*l"))
            p:close()
        }
    }
--- response_body
dir: 700 root name ok: true
true
dir left after connect: 0



=== TEST 2: strangers that connect first and flood bytes are refused; the driver works
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local rt = require("resty_async_core").__rt
            local path = assert(rt.path())
            -- 50 connections from another process, each sending 64 KiB
            local ready = os.tmpname()
            os.execute("python3 -c '" .. [[
import socket, sys, time
socks = []
for i in range(50):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.setblocking(False)
    try:
        s.send(b"x" * 65536)
    except BlockingIOError:
        pass
    socks.append(s)
open(sys.argv[2], "w").write("ready")
time.sleep(3)
]] .. "' " .. path .. " " .. ready .. " &")
            for _ = 1, 200 do
                local f = io.open(ready)
                local s = f and f:read("*a")
                if f then f:close() end
                if s == "ready" then break end
                ngx.sleep(0.01)
            end
            os.remove(ready)
            ngx.say("sleep: ", async.sleep(0.05))
            ngx.say("sha256: ", async.sha256("abc"):sub(1, 8))
            local st = async.stats()
            ngx.say("rejected_peers=", st.rejected_peers, " in_flight=",
                    st.in_flight, " drivers=", st.drivers)
        }
    }
--- response_body
sleep: true
sha256: ba7816bf
rejected_peers=50 in_flight=0 drivers=1
--- timeout: 10
