-- Browser sign-in (spoa_agent/oidc): the answers the agent asks for with
-- txn.spoa.decision = "oidc" (a redirect with its Set-Cookie headers, or a
-- small HTML page), and the removal of the gateway's own cookies before a
-- request goes upstream. The agent builds every URL and cookie; this file
-- only copies them out. Works on Lua 5.3 and 5.4.

local M = {}

local PAGES = {
  refused = { "Access refused",
    "You are signed in as %s, who may not use this site. Ask its operator for access, or sign out and sign in as someone else.",
    "/.spoa-agent/oidc/logout", "Sign out" },
  failed = { "Sign-in failed",
    "The sign-in could not be finished (it took too long, or was started in another browser or tab).",
    "/", "Try again" },
  signed_out = { "Signed out", "You are signed out.", "/", "Sign in again" },
  unavailable = { "Sign-in unavailable",
    "The sign-in service cannot be reached right now; retry in a moment.", "/", "Retry" },
}

local HTML_ESCAPES = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
                       ["'"] = "&#39;" }

function M.escape(text)
  return (tostring(text or ""):gsub("[&<>\"']", HTML_ESCAPES))
end

--- The HTML of page `name`; `user` fills the refusal's "signed in as".
function M.page(name, user)
  local page = PAGES[name] or PAGES.failed
  local text = page[2]
  if text:find("%%s") then
    text = text:format(M.escape(user ~= nil and user ~= "" and user or "someone"))
  end
  return "<!doctype html><html><head><meta charset=\"utf-8\"><title>" .. page[1]
    .. "</title></head><body><h1>" .. page[1] .. "</h1><p>" .. text .. "</p><p><a href=\""
    .. page[3] .. "\">" .. page[4] .. "</a></p></body></html>"
end

-- The gateway's cookies: the upstream never sees them.
local OWN = { spoa_session = true, spoa_login = true, ["__Host-spoa_session"] = true,
              ["__Host-spoa_login"] = true }

--- A Cookie header without the gateway's cookies ("" when none is left).
function M.strip_cookies(header)
  local kept = {}
  for part in tostring(header or ""):gmatch("[^;]+") do
    local name = part:match("^%s*([^=%s]+)")
    if name and not OWN[name] then
      kept[#kept + 1] = part:match("^%s*(.-)%s*$")
    end
  end
  return table.concat(kept, "; ")
end

if core then
  core.register_service("spoa-oidc", "http", function(applet)
    local status = tonumber(applet:get_var("txn.spoa.status")) or 503
    local body = ""
    applet:set_status(status)
    applet:add_header("Cache-Control", "no-store")
    for _, name in ipairs({ "txn.spoa.oidc_cookie1", "txn.spoa.oidc_cookie2" }) do
      local value = applet:get_var(name)
      if value then
        applet:add_header("Set-Cookie", value)
      end
    end
    local location = applet:get_var("txn.spoa.oidc_location")
    if location then
      applet:add_header("Location", location)
    else
      body = M.page(applet:get_var("txn.spoa.oidc_page"), applet:get_var("txn.spoa.oidc_user"))
      applet:add_header("Content-Type", "text/html; charset=utf-8")
      applet:add_header("Content-Security-Policy", "default-src 'none'")
    end
    applet:add_header("Content-Length", tostring(#body))
    applet:start_response()
    applet:send(body)
  end)

  core.register_action("spoa-strip-cookies", { "http-req" }, function(txn)
    local headers = txn.http:req_get_headers()["cookie"]
    if not headers then
      return
    end
    local kept = {}
    for i = 0, #headers do
      if headers[i] then
        local value = M.strip_cookies(headers[i])
        if value ~= "" then
          kept[#kept + 1] = value
        end
      end
    end
    txn.http:req_del_header("cookie")
    if #kept > 0 then
      txn.http:req_set_header("cookie", table.concat(kept, "; "))
    end
  end, 0)
end

return M
