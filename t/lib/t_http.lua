-- Test helper: a real HTTP/1.0 client over a cosocket, so that a handler
-- can send many concurrent requests to its own worker.
local _M = {}

function _M.request(method, path, body, timeout)
    local sock = ngx.socket.tcp()
    sock:settimeout(timeout or 10000)
    local ok, err = sock:connect("127.0.0.1", tonumber(ngx.var.server_port))
    if not ok then
        return nil, "connect: " .. err
    end
    local req = method .. " " .. path .. " HTTP/1.0\r\nHost: localhost\r\n"
    if body then
        req = req .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
    else
        req = req .. "\r\n"
    end
    ok, err = sock:send(req)
    if not ok then
        return nil, "send: " .. err
    end
    local data
    data, err = sock:receive("*a")
    sock:close()
    if not data then
        return nil, "receive: " .. err
    end
    local status = tonumber(data:match("^HTTP/%d%.%d (%d+)"))
    local resp_body = data:match("\r\n\r\n(.*)$")
    return status, resp_body
end

function _M.get(path, timeout)
    return _M.request("GET", path, nil, timeout)
end

-- GET path over TLS (server name test.com, certificate not verified) from
-- a server listening on the unix socket sock_path, resuming session when
-- given. Returns the TLS session, the status and the body, or nil and
-- what failed.
function _M.tls_get(sock_path, path, session)
    local sock = ngx.socket.tcp()
    sock:settimeout(10000)
    local ok, err = sock:connect("unix:" .. sock_path)
    if not ok then
        return nil, "connect: " .. err
    end
    local sess
    sess, err = sock:sslhandshake(session, "test.com", false)
    if not sess then
        sock:close()
        return nil, "handshake: " .. err
    end
    ok, err = sock:send("GET " .. path .. " HTTP/1.0\r\nHost: test.com\r\n\r\n")
    if not ok then
        sock:close()
        return nil, "send: " .. err
    end
    local data
    data, err = sock:receive("*a")
    sock:close()
    if not data then
        return nil, "receive: " .. err
    end
    return sess, tonumber(data:match("^HTTP/%d%.%d (%d+)")),
           data:match("\r\n\r\n(.*)$")
end

-- Runs fn(i) in n light threads; returns the results in order and the
-- elapsed wall time.
function _M.parallel(n, fn)
    ngx.update_time()
    local t0 = ngx.now()
    local threads = {}
    for i = 1, n do
        threads[i] = ngx.thread.spawn(fn, i)
    end
    local res = {}
    for i = 1, n do
        local ok, a, b = ngx.thread.wait(threads[i])
        res[i] = { ok = ok, a, b }
    end
    ngx.update_time()
    return res, ngx.now() - t0
end

function _M.sha256sum(data)
    local name = os.tmpname()
    local f = assert(io.open(name, "wb"))
    f:write(data)
    f:close()
    local p = assert(io.popen("sha256sum " .. name))
    local out = p:read("*a")
    p:close()
    os.remove(name)
    return out:match("^(%x+)")
end

return _M
