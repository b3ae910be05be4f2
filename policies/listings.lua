-- listings.lua - new products go into the shop only after two people have seen them.
--
-- Covers one action: shop.create_listing (covers below), whose input looks like
--   { title = "Blue mug", price = 12.5, new_product = true }
-- new_product is true for a product the shop has never sold, false for a new listing of a
-- product it already sells. Every other action: no opinion (nil).
--
-- Rules:
--   listing_new_product       new_product is true (or anything but false or missing): the
--                             catalog team approves, and not the submitter (four eyes)
--   listing_existing_product  new_product is false or missing: allowed
--
-- Tests: listings_test.lua.

local APPROVER_ROLES = { "catalog" }

covers = { "shop.create_listing" }  -- decide only runs for these actions

function decide(action, ctx)
  if action.connector ~= "shop" or action.action ~= "create_listing" then
    return nil
  end

  local input = type(action.input) == "table" and action.input or {}
  local new_product = input.new_product
  local title = type(input.title) == "string" and input.title or "(no title)"

  if new_product == nil or new_product == false then
    return {
      verdict = "allow",
      rule = "listing_existing_product",
      reason = "a listing of a product the shop already sells",
    }
  end

  local reason = "a new product needs the catalog team's approval"
  if new_product ~= true then
    -- "yes", 1, ...: not clearly an existing product, so treat it as a new one
    reason = "new_product should be true or false, got " .. tostring(new_product) ..
             "; treated as a new product, which needs the catalog team's approval"
  end
  return {
    verdict = "approve",
    rule = "listing_new_product",
    reason = reason,
    roles = APPROVER_ROLES,
    four_eyes = true,
    summary = "New product listing: " .. title,
  }
end
