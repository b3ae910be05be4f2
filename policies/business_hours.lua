-- business_hours.lua - outside business hours, irreversible actions wait for a person.
--
-- Covers the irreversible actions (effect "irreversible") of the connectors in CONNECTORS
-- (covers, built from CONNECTORS, keeps decide from running for other connectors at all).
-- Business hours are OPEN_HOUR:00 to CLOSE_HOUR:00 UTC, Monday to Friday, except HOLIDAYS.
-- Outside them: approve (anyone who may approve). Inside them: no opinion, so the other
-- policies (or the default) decide alone. Every other action: no opinion (nil).
--
-- Rule:
--   outside_business_hours  an irreversible action outside business hours needs approval
--
-- Why it abstains during business hours instead of allowing: an allow is a vote, and when
-- any policy votes, the default no longer applies. shop.charge has no rule of its own, so
-- its default (approve, for irreversible actions) would turn into an allow.
--
-- Why it names no roles: the roles of all approve votes are merged into one list, so naming
-- e.g. "on_call" here would let on_call approve, at night, the large refunds that
-- refunds.lua leaves to finance. With no roles, the other policies' roles stay in charge,
-- and an action no other policy restricts may be approved by anyone who may approve.
--
-- Tests: business_hours_test.lua.

local CONNECTORS = { shop = true, tickets = true }

-- decide only runs for the actions of these connectors: covers = { "shop", "tickets" }
covers = {}
for name in pairs(CONNECTORS) do
  covers[#covers + 1] = name
end

local OPEN_HOUR = 8      -- 08:00 UTC
local CLOSE_HOUR = 18    -- until 17:59:59 UTC

-- os.date's wday: 1 is Sunday, 2 Monday, ..., 7 Saturday.
local WORKDAYS = { [2] = true, [3] = true, [4] = true, [5] = true, [6] = true }
local DAY_NAMES = { "Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday" }

-- Days that are not working days although they fall on Monday to Friday (UTC dates).
local HOLIDAYS = {
  ["2026-01-01"] = "New Year's Day",
  ["2026-12-25"] = "Christmas Day",
}

function decide(action, ctx)
  if not CONNECTORS[action.connector] or action.effect ~= "irreversible" then
    return nil
  end

  local now = ctx.now()
  local t = os.date("!*t", now)            -- "!" means UTC
  local today = os.date("!%Y-%m-%d", now)
  local when = string.format("%s %s %02d:%02d UTC", DAY_NAMES[t.wday], today, t.hour, t.min)

  local why
  if HOLIDAYS[today] then
    why = HOLIDAYS[today]
  elseif not WORKDAYS[t.wday] then
    why = "not a working day"
  elseif t.hour < OPEN_HOUR or t.hour >= CLOSE_HOUR then
    why = string.format("outside %02d:00-%02d:00 UTC", OPEN_HOUR, CLOSE_HOUR)
  else
    return nil   -- business hours: no opinion
  end

  return {
    verdict = "approve",
    rule = "outside_business_hours",
    reason = string.format("%s.%s is irreversible and it is %s (%s); a person must approve it",
                           action.connector, tostring(action.action), when, why),
  }
end
