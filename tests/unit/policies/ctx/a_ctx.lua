-- What a policy can (and cannot) do with ctx, chosen by action.input.kind.
local function keys(t)
  local list = {}
  for k in pairs(t) do
    list[#list + 1] = tostring(k)
  end
  table.sort(list)
  return table.concat(list, " ")
end

local kinds = {
  now = function(ctx)
    local now = ctx.now()
    return math.type(now) .. " " .. tostring(now) .. " " .. tostring(ctx.now() == now)
  end,
  write = function(ctx) ctx.x = 1 end,
  write_now = function(ctx) ctx.now = function() return 0 end end,
  insert = function(ctx) table.insert(ctx, "x") end,
  setmetatable = function(ctx) setmetatable(ctx, {}) end,
  pcall_write = function(ctx)
    local ok = pcall(function() ctx.x = 1 end)
    return tostring(ok) .. " " .. tostring(ctx.x)
  end,
  look = function(ctx)
    return table.concat({ tostring(ctx.x), tostring(rawget(ctx, "x")), tostring(rawget(ctx, "now")),
                          tostring(getmetatable(ctx)), keys(ctx), type(ctx.now) }, ",")
  end,
}

function decide(action, ctx)
  return { verdict = "allow", rule = action.input.kind, reason = kinds[action.input.kind](ctx) }
end
