//! An Odoo-shaped data generator: the main Odoo 18 Community tables with their
//! real column names and physical types (a subset of each table's columns),
//! and a consistent, deterministic business history.
//!
//! Two outputs, both plain SQL for `psql`:
//! - [`write_base`]: DDL + `COPY` blocks: two companies (fiscal years ending
//!   in March and in December, one chart with a code per company), partners,
//!   products, sale orders with lines, posted customer invoices whose journal
//!   items balance (receivable debit = income credits + tax credit), credit
//!   notes reconciled with part of their invoice, vendor bills, payments
//!   with their journal entries and reconciliations, tax tags ("+" and "-"
//!   grids), invoices of the second company partly in a foreign currency,
//!   stock moves with valuation layers and CRM leads.
//! - [`write_workload`]: a stream of Odoo-like transactions to run *after* the
//!   base is loaded (new orders, confirmations, invoicing, payments, partner
//!   edits, draft-line deletes, large HTML notes that become unchanged-TOAST
//!   values on later updates) — what the CDC path sees in production.
//!
//! The same `(scale, seed)` always produces the same bytes.

use std::fmt::Write as _;
use std::io::{self, Write};

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Column definitions: name and physical type, as in Odoo 18's schema.
struct TableDef {
    name: &'static str,
    columns: &'static [(&'static str, &'static str)],
}

const PARTNER: TableDef = TableDef {
    name: "res_partner",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("company_id", "integer"),
        ("create_date", "timestamp without time zone"),
        ("name", "character varying"),
        ("parent_id", "integer"),
        ("commercial_partner_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("complete_name", "character varying"),
        ("ref", "character varying"),
        ("lang", "character varying"),
        ("tz", "character varying"),
        ("vat", "character varying"),
        ("type", "character varying"),
        ("street", "character varying"),
        ("zip", "character varying"),
        ("city", "character varying"),
        ("country_id", "integer"),
        ("email", "character varying"),
        ("phone", "character varying"),
        ("comment", "text"),
        ("partner_latitude", "numeric"),
        ("active", "boolean"),
        ("is_company", "boolean"),
        ("customer_rank", "integer"),
        ("supplier_rank", "integer"),
        ("credit_limit", "jsonb"),
        ("autopost_bills", "character varying NOT NULL"),
        ("write_date", "timestamp without time zone"),
    ],
};

const PRODUCT_TEMPLATE: TableDef = TableDef {
    name: "product_template",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("categ_id", "integer NOT NULL"),
        ("uom_id", "integer NOT NULL"),
        ("uom_po_id", "integer NOT NULL"),
        ("company_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("type", "character varying NOT NULL"),
        ("service_tracking", "character varying NOT NULL"),
        ("default_code", "character varying"),
        ("name", "jsonb NOT NULL"),
        ("description_sale", "jsonb"),
        ("list_price", "numeric"),
        ("volume", "numeric"),
        ("weight", "numeric"),
        ("sale_ok", "boolean"),
        ("purchase_ok", "boolean"),
        ("active", "boolean"),
        ("is_storable", "boolean"),
        ("tracking", "character varying NOT NULL"),
        ("purchase_line_warn", "character varying NOT NULL"),
        ("sale_line_warn", "character varying NOT NULL"),
        ("invoice_policy", "character varying"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const PRODUCT: TableDef = TableDef {
    name: "product_product",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("product_tmpl_id", "integer NOT NULL"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("default_code", "character varying"),
        ("standard_price", "jsonb"),
        ("volume", "numeric"),
        ("weight", "numeric"),
        ("active", "boolean"),
        ("write_date", "timestamp without time zone"),
        ("create_date", "timestamp without time zone"),
    ],
};

const ACCOUNT: TableDef = TableDef {
    name: "account_account",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("currency_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("account_type", "character varying NOT NULL"),
        ("name", "jsonb NOT NULL"),
        ("code_store", "jsonb"),
        ("deprecated", "boolean"),
        ("reconcile", "boolean"),
        ("non_trade", "boolean"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const JOURNAL: TableDef = TableDef {
    name: "account_journal",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("default_account_id", "integer"),
        ("sequence", "integer"),
        ("company_id", "integer NOT NULL"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("code", "character varying(5) NOT NULL"),
        ("type", "character varying NOT NULL"),
        ("invoice_reference_type", "character varying NOT NULL"),
        ("invoice_reference_model", "character varying NOT NULL"),
        ("name", "jsonb NOT NULL"),
        ("active", "boolean"),
        ("restrict_mode_hash_table", "boolean"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const SALE_ORDER: TableDef = TableDef {
    name: "sale_order",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("company_id", "integer NOT NULL"),
        ("partner_id", "integer NOT NULL"),
        ("partner_invoice_id", "integer NOT NULL"),
        ("partner_shipping_id", "integer NOT NULL"),
        ("currency_id", "integer"),
        ("user_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("name", "character varying NOT NULL"),
        ("state", "character varying"),
        ("invoice_status", "character varying"),
        ("validity_date", "date"),
        ("note", "text"),
        ("currency_rate", "numeric"),
        ("amount_untaxed", "numeric"),
        ("amount_tax", "numeric"),
        ("amount_total", "numeric"),
        ("locked", "boolean"),
        ("require_signature", "boolean"),
        ("require_payment", "boolean"),
        ("create_date", "timestamp without time zone"),
        ("date_order", "timestamp without time zone NOT NULL"),
        ("write_date", "timestamp without time zone"),
        ("prepayment_percent", "double precision"),
        ("picking_policy", "character varying NOT NULL"),
        // sale_crm: the CRM opportunity the quotation was made from.
        ("opportunity_id", "integer"),
    ],
};

const SALE_ORDER_LINE: TableDef = TableDef {
    name: "sale_order_line",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("order_id", "integer NOT NULL"),
        ("sequence", "integer"),
        ("company_id", "integer"),
        ("currency_id", "integer"),
        ("order_partner_id", "integer"),
        ("salesman_id", "integer"),
        ("product_id", "integer"),
        ("product_uom", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("state", "character varying"),
        ("invoice_status", "character varying"),
        ("analytic_distribution", "jsonb"),
        ("name", "text NOT NULL"),
        ("product_uom_qty", "numeric NOT NULL"),
        ("price_unit", "numeric NOT NULL"),
        ("discount", "numeric"),
        ("price_subtotal", "numeric"),
        ("price_total", "numeric"),
        ("qty_delivered", "numeric"),
        ("qty_invoiced", "numeric"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
        ("price_tax", "double precision"),
        ("customer_lead", "double precision NOT NULL"),
    ],
};

const MOVE: TableDef = TableDef {
    name: "account_move",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("sequence_number", "integer"),
        ("journal_id", "integer NOT NULL"),
        ("company_id", "integer"),
        ("partner_id", "integer"),
        ("commercial_partner_id", "integer"),
        ("currency_id", "integer NOT NULL"),
        ("invoice_user_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("sequence_prefix", "character varying"),
        ("name", "character varying"),
        ("ref", "character varying"),
        ("state", "character varying NOT NULL"),
        ("move_type", "character varying NOT NULL"),
        ("auto_post", "character varying NOT NULL"),
        ("payment_state", "character varying"),
        ("invoice_origin", "character varying"),
        ("date", "date NOT NULL"),
        ("invoice_date", "date"),
        ("invoice_date_due", "date"),
        ("narration", "text"),
        ("amount_untaxed", "numeric"),
        ("amount_tax", "numeric"),
        ("amount_total", "numeric"),
        ("amount_residual", "numeric"),
        ("amount_total_signed", "numeric"),
        ("amount_residual_signed", "numeric"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const MOVE_LINE: TableDef = TableDef {
    name: "account_move_line",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("move_id", "integer NOT NULL"),
        ("journal_id", "integer"),
        ("company_id", "integer"),
        ("company_currency_id", "integer"),
        ("sequence", "integer"),
        ("account_id", "integer"),
        ("currency_id", "integer NOT NULL"),
        ("partner_id", "integer"),
        ("product_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("move_name", "character varying"),
        ("parent_state", "character varying"),
        ("name", "character varying"),
        ("display_type", "character varying NOT NULL"),
        ("date", "date"),
        ("invoice_date", "date"),
        ("date_maturity", "date"),
        ("debit", "numeric"),
        ("credit", "numeric"),
        ("balance", "numeric"),
        ("amount_currency", "numeric"),
        ("amount_residual", "numeric"),
        ("quantity", "numeric"),
        ("price_unit", "numeric"),
        ("price_subtotal", "numeric"),
        ("price_total", "numeric"),
        ("discount", "numeric"),
        ("reconciled", "boolean"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
        ("tax_line_id", "integer"),
        // The item's tax tags count with the opposite sign (sales documents).
        ("tax_tag_invert", "boolean"),
        // The unit the quantity is in: Dozens on every third product's
        // lines, Units on the others (every product is kept in Units).
        ("product_uom_id", "integer"),
    ],
};

const TAX: TableDef = TableDef {
    name: "account_tax",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("company_id", "integer NOT NULL"),
        ("type_tax_use", "character varying NOT NULL"),
        ("amount_type", "character varying NOT NULL"),
        ("name", "jsonb NOT NULL"),
        ("amount", "numeric NOT NULL"),
        ("active", "boolean"),
    ],
};

/// Tax tags: the grids of a localization's tax report ("+03", "-03": a
/// tag per sign, `tax_negate` on the "-" one).
const ACCOUNT_TAG: TableDef = TableDef {
    name: "account_account_tag",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("country_id", "integer"),
        ("applicability", "character varying NOT NULL"),
        ("name", "jsonb NOT NULL"),
        ("active", "boolean"),
        ("tax_negate", "boolean"),
    ],
};

/// Tax tags of a journal item (many2many; its primary key is both columns).
const LINE_TAG: TableDef = TableDef {
    name: "account_account_tag_account_move_line_rel",
    columns: &[
        ("account_move_line_id", "integer NOT NULL"),
        ("account_account_tag_id", "integer NOT NULL"),
    ],
};

/// Taxes of a journal item (many2many; its primary key is both columns).
const LINE_TAX: TableDef = TableDef {
    name: "account_move_line_account_tax_rel",
    columns: &[
        ("account_move_line_id", "integer NOT NULL"),
        ("account_tax_id", "integer NOT NULL"),
    ],
};

const PAYMENT: TableDef = TableDef {
    name: "account_payment",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("move_id", "integer"),
        ("journal_id", "integer NOT NULL"),
        ("company_id", "integer NOT NULL"),
        ("currency_id", "integer"),
        ("partner_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("name", "character varying"),
        ("state", "character varying NOT NULL"),
        ("payment_type", "character varying NOT NULL"),
        ("partner_type", "character varying NOT NULL"),
        ("memo", "character varying"),
        ("date", "date NOT NULL"),
        ("amount", "numeric"),
        ("is_reconciled", "boolean"),
        ("is_matched", "boolean"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const STOCK_MOVE: TableDef = TableDef {
    name: "stock_move",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("company_id", "integer NOT NULL"),
        ("product_id", "integer NOT NULL"),
        ("product_uom", "integer NOT NULL"),
        ("location_id", "integer NOT NULL"),
        ("location_dest_id", "integer NOT NULL"),
        ("partner_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("name", "character varying NOT NULL"),
        ("state", "character varying"),
        ("origin", "character varying"),
        ("reference", "character varying"),
        ("procure_method", "character varying NOT NULL"),
        ("product_qty", "numeric"),
        ("product_uom_qty", "numeric NOT NULL"),
        ("quantity", "numeric"),
        ("picked", "boolean"),
        ("date", "timestamp without time zone NOT NULL"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
        ("price_unit", "double precision"),
        ("sale_line_id", "integer"),
    ],
};

const LEAD: TableDef = TableDef {
    name: "crm_lead",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("user_id", "integer"),
        ("team_id", "integer"),
        ("company_id", "integer"),
        ("stage_id", "integer"),
        ("partner_id", "integer"),
        ("create_uid", "integer"),
        ("write_uid", "integer"),
        ("name", "character varying NOT NULL"),
        ("type", "character varying NOT NULL"),
        ("priority", "character varying"),
        ("contact_name", "character varying"),
        ("partner_name", "character varying"),
        ("email_from", "character varying"),
        ("city", "character varying"),
        ("date_deadline", "date"),
        ("description", "text"),
        ("expected_revenue", "numeric"),
        ("active", "boolean"),
        ("date_closed", "timestamp without time zone"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
        ("probability", "double precision"),
    ],
};

const COMPANY: TableDef = TableDef {
    name: "res_company",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("name", "character varying NOT NULL"),
        ("partner_id", "integer NOT NULL"),
        ("currency_id", "integer NOT NULL"),
        ("fiscalyear_last_day", "integer NOT NULL"),
        ("fiscalyear_last_month", "character varying NOT NULL"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const PARTIAL_RECONCILE: TableDef = TableDef {
    name: "account_partial_reconcile",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("debit_move_id", "integer NOT NULL"),
        ("credit_move_id", "integer NOT NULL"),
        ("debit_currency_id", "integer"),
        ("credit_currency_id", "integer"),
        ("company_id", "integer"),
        ("max_date", "date"),
        ("amount", "numeric"),
        ("debit_amount_currency", "numeric"),
        ("credit_amount_currency", "numeric"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const UOM: TableDef = TableDef {
    name: "uom_uom",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("category_id", "integer NOT NULL"),
        ("uom_type", "character varying NOT NULL"),
        ("name", "jsonb NOT NULL"),
        ("factor", "numeric NOT NULL"),
        ("rounding", "numeric NOT NULL"),
        ("active", "boolean"),
    ],
};

const CRM_STAGE: TableDef = TableDef {
    name: "crm_stage",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("sequence", "integer"),
        ("name", "jsonb NOT NULL"),
        ("is_won", "boolean"),
        ("fold", "boolean"),
    ],
};

const LOCATION: TableDef = TableDef {
    name: "stock_location",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("location_id", "integer"),
        ("company_id", "integer"),
        ("name", "character varying NOT NULL"),
        ("complete_name", "character varying"),
        ("usage", "character varying NOT NULL"),
        ("active", "boolean"),
    ],
};

const VALUATION_LAYER: TableDef = TableDef {
    name: "stock_valuation_layer",
    columns: &[
        ("id", "serial PRIMARY KEY"),
        ("company_id", "integer NOT NULL"),
        ("product_id", "integer NOT NULL"),
        ("stock_move_id", "integer"),
        ("description", "character varying"),
        ("quantity", "numeric"),
        ("unit_cost", "numeric"),
        ("value", "numeric"),
        ("remaining_qty", "numeric"),
        ("remaining_value", "numeric"),
        ("create_date", "timestamp without time zone"),
        ("write_date", "timestamp without time zone"),
    ],
};

const TABLES: &[&TableDef] = &[
    &UOM,
    &CRM_STAGE,
    &LOCATION,
    &COMPANY,
    &PARTNER,
    &PRODUCT_TEMPLATE,
    &PRODUCT,
    &ACCOUNT,
    &JOURNAL,
    &SALE_ORDER,
    &SALE_ORDER_LINE,
    &MOVE,
    &MOVE_LINE,
    &TAX,
    &LINE_TAX,
    &ACCOUNT_TAG,
    &LINE_TAG,
    &PAYMENT,
    &PARTIAL_RECONCILE,
    &STOCK_MOVE,
    &VALUATION_LAYER,
    &LEAD,
];

/// The tables the generator creates, with `(column, physical type)` pairs as
/// `format_type` prints them (for checking against the real Odoo schema).
pub fn schema() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    TABLES
        .iter()
        .map(|t| {
            let cols = t
                .columns
                .iter()
                .map(|(c, ty)| {
                    let ty = ty
                        .replace(" PRIMARY KEY", "")
                        .replace(" NOT NULL", "")
                        .replace("serial", "integer");
                    (*c, ty)
                })
                .collect();
            (t.name, cols)
        })
        .collect()
}

/// Account ids created by the base (`account_account`).
const ACC_RECEIVABLE: i64 = 1;
const ACC_INCOME: i64 = 2;
const ACC_TAX: i64 = 3;
/// Tax tags ("+" grid; its "-" tag is the next id).
const TAG_SALES_BASE: i64 = 1;
const TAG_SALES_TAX: i64 = 3;
const TAG_PURCHASES_BASE: i64 = 5;
const TAG_ACCOUNTS: i64 = 7;
const ACC_BANK: i64 = 4;
const ACC_PAYABLE: i64 = 5;
const ACC_EXPENSE: i64 = 6;
/// Journal ids.
const JOURNAL_SALE: i64 = 1;
const JOURNAL_BANK: i64 = 2;
const JOURNAL_PURCHASE: i64 = 3;
/// The second company's sales and bank journals (its purchase journal is 6).
const JOURNAL_SALE_2: i64 = 4;
const JOURNAL_BANK_2: i64 = 5;
/// A foreign currency (`res_currency` id) some invoices of the second
/// company are in.
const CURRENCY_CZK: i64 = 2;

/// Size of the generated history.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub customers: usize,
    pub products: usize,
    pub orders: usize,
    pub leads: usize,
}

impl Scale {
    /// Scale 1 = 100 customers, 20 products, 500 orders (~1,400 journal items).
    pub fn new(scale: f64) -> Self {
        let n = |base: f64, min: usize| ((base * scale).round() as usize).max(min);
        Scale {
            customers: n(100.0, 5),
            products: n(20.0, 3),
            orders: n(500.0, 5),
            leads: n(50.0, 2),
        }
    }
}

/// One COPY value in text format.
/// One journal item (`account_move_line`) as the generator writes it.
#[derive(Clone, Copy)]
struct JournalItem<'a> {
    company: i64,
    /// The document's currency and its units per unit of company currency
    /// (an integer, so amounts in both currencies are exact).
    currency: i64,
    rate: i64,
    move_id: usize,
    journal: i64,
    seq: usize,
    account: i64,
    partner: usize,
    product: Option<usize>,
    name: &'a str,
    display: &'a str,
    debit: i64,
    credit: i64,
    residual: i64,
    qty: i64,
    price: i64,
    when: NaiveDateTime,
    move_name: &'a str,
    /// Tax tags count with the opposite sign (Odoo: a sales invoice or a
    /// purchase refund, `move.is_inbound()`).
    tag_invert: bool,
}

impl JournalItem<'_> {
    /// The row of item `id`, in the generator's column order. A receivable
    /// or payable line with no residual is reconciled; a tax line names the
    /// tax.
    fn row(&self, id: usize) -> Vec<String> {
        let reconciled = matches!(self.account, ACC_RECEIVABLE | ACC_PAYABLE) && self.residual == 0;
        vec![
            id.to_string(),
            self.move_id.to_string(),
            self.journal.to_string(),
            self.company.to_string(),
            "1".into(),
            self.seq.to_string(),
            self.account.to_string(),
            self.currency.to_string(),
            self.partner.to_string(),
            self.product.map_or(NULL.into(), |p| p.to_string()),
            "2".into(),
            "2".into(),
            self.move_name.into(),
            "posted".into(),
            esc(self.name),
            self.display.into(),
            date(self.when),
            date(self.when),
            date(self.when + Duration::days(30)),
            money(self.debit),
            money(self.credit),
            money(self.debit - self.credit),
            money((self.debit - self.credit) * self.rate),
            money(self.residual),
            self.qty.to_string(),
            money(self.price * self.rate),
            money(self.credit.max(self.debit) * self.rate),
            money(self.credit.max(self.debit) * self.rate),
            "0".into(),
            if reconciled { "t" } else { "f" }.into(),
            ts(self.when),
            ts(self.when),
            match (self.account, self.company) {
                (ACC_TAX, 1) => "1",
                (ACC_TAX, _) => "3",
                _ => NULL,
            }
            .into(),
            if self.tag_invert { "t" } else { "f" }.into(),
            self.product
                .map_or(NULL.into(), |p| if p % 3 == 0 { "2" } else { "1" }.into()),
        ]
    }
}

/// A journal entry's header (`account_move`) as the generator writes it.
/// Amounts in cents: unsigned in the document's currency, signed in the
/// company's (`*_signed`).
#[derive(Clone, Copy)]
struct Entry<'a> {
    id: usize,
    /// The document's currency and its units per unit of company currency.
    currency: i64,
    rate: i64,
    seq: usize,
    journal: i64,
    company: i64,
    partner: usize,
    /// The salesperson (invoices); none on payments.
    salesperson: bool,
    prefix: &'a str,
    name: &'a str,
    reference: Option<&'a str>,
    move_type: &'a str,
    payment_state: &'a str,
    origin: Option<&'a str>,
    date: NaiveDateTime,
    /// Invoice date and due date (30 days later), for invoices.
    due: bool,
    untaxed: i64,
    tax: i64,
    total: i64,
    residual: i64,
    total_signed: i64,
    residual_signed: i64,
}

impl Entry<'_> {
    fn row(&self) -> Vec<String> {
        let opt = |v: Option<&str>| v.map_or(NULL.into(), esc);
        vec![
            self.id.to_string(),
            self.seq.to_string(),
            self.journal.to_string(),
            self.company.to_string(),
            self.partner.to_string(),
            self.partner.to_string(),
            self.currency.to_string(),
            if self.salesperson { "2" } else { NULL }.into(),
            "2".into(),
            "2".into(),
            self.prefix.into(),
            self.name.into(),
            opt(self.reference),
            "posted".into(),
            self.move_type.into(),
            "no".into(),
            self.payment_state.into(),
            opt(self.origin),
            date(self.date),
            if self.due {
                date(self.date)
            } else {
                NULL.into()
            },
            if self.due {
                date(self.date + Duration::days(30))
            } else {
                NULL.into()
            },
            NULL.into(),
            money(self.untaxed * self.rate),
            money(self.tax * self.rate),
            money(self.total * self.rate),
            money(self.residual * self.rate),
            money(self.total_signed),
            money(self.residual_signed),
            ts(self.date),
            ts(self.date),
        ]
    }
}

/// A bank payment: its `account_payment` row and its journal entry.
#[derive(Clone, Copy)]
struct Payment<'a> {
    /// The `account_payment` id.
    id: usize,
    move_id: usize,
    /// Its number in the journal's sequence.
    seq: usize,
    journal: i64,
    company: i64,
    currency: i64,
    rate: i64,
    partner: usize,
    prefix: &'a str,
    name: &'a str,
    /// The document it pays.
    memo: &'a str,
    date: NaiveDateTime,
    /// In company currency, cents.
    amount: i64,
    /// A customer's payment (else one to a vendor).
    inbound: bool,
}

impl Payment<'_> {
    fn entry(&self) -> Vec<String> {
        Entry {
            currency: self.currency,
            rate: self.rate,
            id: self.move_id,
            seq: self.seq,
            journal: self.journal,
            company: self.company,
            partner: self.partner,
            salesperson: false,
            prefix: self.prefix,
            name: self.name,
            reference: Some(self.memo),
            move_type: "entry",
            payment_state: "not_paid",
            origin: None,
            date: self.date,
            due: false,
            untaxed: 0,
            tax: 0,
            total: self.amount,
            residual: 0,
            total_signed: self.amount,
            residual_signed: 0,
        }
        .row()
    }

    fn row(&self) -> Vec<String> {
        let (direction, kind) = if self.inbound {
            ("inbound", "customer")
        } else {
            ("outbound", "supplier")
        };
        vec![
            self.id.to_string(),
            self.move_id.to_string(),
            self.journal.to_string(),
            self.company.to_string(),
            self.currency.to_string(),
            self.partner.to_string(),
            "2".into(),
            "2".into(),
            self.name.into(),
            "paid".into(),
            direction.into(),
            kind.into(),
            esc(self.memo),
            date(self.date),
            money(self.amount * self.rate),
            "t".into(),
            "t".into(),
            ts(self.date),
            ts(self.date),
        ]
    }
}

/// A reconciliation of a debit item with a credit item
/// (`account_partial_reconcile`).
struct Reconcile {
    debit_item: String,
    credit_item: String,
    company: i64,
    currency: i64,
    rate: i64,
    date: NaiveDateTime,
    /// In company currency, cents.
    amount: i64,
}

impl Reconcile {
    fn row(&self, id: usize) -> Vec<String> {
        vec![
            id.to_string(),
            self.debit_item.clone(),
            self.credit_item.clone(),
            self.currency.to_string(),
            self.currency.to_string(),
            self.company.to_string(),
            date(self.date),
            money(self.amount),
            money(self.amount * self.rate),
            money(self.amount * self.rate),
            ts(self.date),
            ts(self.date),
        ]
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' => o.push_str("\\\\"),
            '\t' => o.push_str("\\t"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            c => o.push(c),
        }
    }
    o
}

const NULL: &str = "\\N";

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.abs();
    format!("{sign}{}.{:02}", c / 100, c % 100)
}

fn sql_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ts(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

fn date(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn translated(s: &str) -> String {
    serde_json::json!({ "en_US": s }).to_string()
}

const FIRST: &[&str] = &[
    "Azure", "Deco", "Gemini", "Lumber", "Ready", "Wood", "Brandon", "Colleen", "Addison", "Jesse",
    "Floyd", "Billy", "Edwin", "Toni", "Oscar", "Sandra", "Nolan", "Marc", "Théo", "Zoë",
];
const LAST: &[&str] = &[
    "Interior",
    "Addict",
    "Furniture",
    "Inc",
    "Mat",
    "Corner",
    "Freeman",
    "Hill",
    "Olivia",
    "Brown",
    "Hawk",
    "Martin",
    "Müller",
    "O'Neil",
    "García",
    "Dupont",
    "Rossi",
    "Nakamura",
];
const CITIES: &[&str] = &[
    "Brussels",
    "Fremont",
    "Liège",
    "Tracy",
    "Namur",
    "San Francisco",
    "Gent",
    "Köln",
    "Lyon",
];
const PRODUCTS: &[&str] = &[
    "Office Chair",
    "Desk Combination",
    "Large Cabinet",
    "Storage Box",
    "Corner Desk",
    "Acoustic Bloc Screens",
    "Cable Management Box",
    "Drawer Black",
    "Flipover",
    "Monitor Stand",
    "Pedal Bin",
    "Whiteboard Pen",
    "Conference Chair",
    "Three-Seat Sofa",
    "Customizable Desk",
];

fn copy_begin(out: &mut impl Write, t: &TableDef) -> io::Result<()> {
    let cols: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
    writeln!(out, "COPY {} ({}) FROM stdin;", t.name, cols.join(", "))
}

fn copy_row(out: &mut impl Write, t: &TableDef, vals: &[String]) -> io::Result<()> {
    debug_assert_eq!(vals.len(), t.columns.len(), "{}", t.name);
    writeln!(out, "{}", vals.join("\t"))
}

fn copy_end(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "\\.")
}

/// A deterministic generator state shared by base and workload.
struct Gen {
    rng: ChaCha8Rng,
    start: NaiveDateTime,
}

impl Gen {
    fn new(seed: u64) -> Self {
        Gen {
            rng: ChaCha8Rng::seed_from_u64(seed),
            start: NaiveDate::from_ymd_opt(2025, 1, 1)
                .and_then(|d| d.and_hms_opt(8, 0, 0))
                .expect("valid start date"),
        }
    }

    fn pick<'a>(&mut self, xs: &'a [&'a str]) -> &'a str {
        xs[self.rng.gen_range(0..xs.len())]
    }

    fn person(&mut self) -> String {
        format!("{} {}", self.pick(FIRST), self.pick(LAST))
    }

    fn html_note(&mut self, min_len: usize) -> String {
        let mut s = String::from("<div><p>");
        while s.len() < min_len {
            let _ = write!(
                s,
                "Customer asked about {} delivery to {}; follow-up #{}. ",
                self.pick(PRODUCTS),
                self.pick(CITIES),
                self.rng.gen_range(1..10_000)
            );
        }
        s.push_str("</p></div>");
        s
    }

    /// Unit price in cents of product `p` (1-based), stable across runs.
    fn price(p: usize) -> i64 {
        (((p * 7919) % 900) as i64 + 25) * 100 + ((p * 31) % 100) as i64
    }
}

/// Write the base schema and history for `scale` and `seed` as a psql script.
pub fn write_base(out: &mut impl Write, scale: Scale, seed: u64) -> io::Result<()> {
    let mut g = Gen::new(seed);
    writeln!(
        out,
        "-- medallion Odoo-shaped demo data: {scale:?}, seed {seed}"
    )?;
    writeln!(out, "SET client_min_messages = warning;")?;
    writeln!(out, "BEGIN;")?;
    for t in TABLES {
        let cols: Vec<String> = t
            .columns
            .iter()
            .map(|(c, ty)| format!("    {c} {ty}"))
            .collect();
        writeln!(out, "CREATE TABLE {} (\n{}\n);", t.name, cols.join(",\n"))?;
    }
    writeln!(
        out,
        "CREATE INDEX ON account_move_line (move_id);\nCREATE INDEX ON sale_order_line (order_id);\n\
         CREATE INDEX ON account_move (partner_id);\n\
         ALTER TABLE account_move_line_account_tax_rel ADD PRIMARY KEY (account_move_line_id, account_tax_id);\n\
         ALTER TABLE account_account_tag_account_move_line_rel ADD PRIMARY KEY (account_move_line_id, account_account_tag_id);"
    )?;
    let t0 = ts(g.start);

    // The company: its partner is partner 1; fiscal years end on 31 March.
    // A second company (its partner follows the customers) closes its
    // fiscal year on 31 December.
    copy_begin(out, &COMPANY)?;
    for (id, name, partner, day, month) in [
        (1, "YourCompany", 1, "31", "3"),
        (2, "YourCompany (Antwerp)", scale.customers + 2, "31", "12"),
    ] {
        copy_row(
            out,
            &COMPANY,
            &[
                id.to_string(),
                name.into(),
                partner.to_string(),
                "1".into(),
                day.into(),
                month.into(),
                t0.clone(),
                t0.clone(),
            ],
        )?;
    }
    copy_end(out)?;

    // Units of measure, CRM stages and stock locations (Odoo's default ids).
    copy_begin(out, &UOM)?;
    for (id, kind, name, factor) in [
        (1, "reference", "Units", "1.0"),
        (2, "bigger", "Dozens", "0.08333333333333333"),
    ] {
        copy_row(
            out,
            &UOM,
            &[
                id.to_string(),
                "1".into(),
                kind.into(),
                esc(&translated(name)),
                factor.into(),
                "0.01".into(),
                "t".into(),
            ],
        )?;
    }
    copy_end(out)?;
    copy_begin(out, &CRM_STAGE)?;
    for (id, name, won) in [
        (1, "New", false),
        (2, "Qualified", false),
        (3, "Proposition", false),
        (4, "Won", true),
    ] {
        copy_row(
            out,
            &CRM_STAGE,
            &[
                id.to_string(),
                id.to_string(),
                esc(&translated(name)),
                if won { "t" } else { "f" }.into(),
                "f".into(),
            ],
        )?;
    }
    copy_end(out)?;
    copy_begin(out, &LOCATION)?;
    for (id, parent, name, full, usage) in [
        (1, NULL, "Physical Locations", "Physical Locations", "view"),
        (2, NULL, "Partners", "Partners", "view"),
        (4, "2", "Vendors", "Partners/Vendors", "supplier"),
        (5, "2", "Customers", "Partners/Customers", "customer"),
        (7, "1", "WH", "WH", "view"),
        (8, "7", "Stock", "WH/Stock", "internal"),
        (
            14,
            NULL,
            "Inventory adjustment",
            "Virtual Locations/Inventory adjustment",
            "inventory",
        ),
    ] {
        copy_row(
            out,
            &LOCATION,
            &[
                id.to_string(),
                parent.into(),
                if usage == "internal" || usage == "view" {
                    "1"
                } else {
                    NULL
                }
                .into(),
                name.into(),
                full.into(),
                usage.into(),
                "t".into(),
            ],
        )?;
    }
    copy_end(out)?;

    // Chart of accounts and journals.
    copy_begin(out, &ACCOUNT)?;
    // One chart shared by both companies, each with its own codes
    // (`code_store` keyed by company id, as Odoo 18 stores it).
    let accounts = [
        (
            ACC_RECEIVABLE,
            "asset_receivable",
            "Account Receivable",
            "121000",
            "1210",
            true,
        ),
        (
            ACC_INCOME,
            "income",
            "Product Sales",
            "400000",
            "4000",
            false,
        ),
        (
            ACC_TAX,
            "liability_current",
            "Tax Received",
            "251000",
            "2510",
            false,
        ),
        (ACC_BANK, "asset_cash", "Bank", "101401", "1014", false),
        (
            ACC_PAYABLE,
            "liability_payable",
            "Account Payable",
            "211000",
            "2110",
            true,
        ),
        (ACC_EXPENSE, "expense", "Expenses", "600000", "6000", false),
    ];
    for (id, kind, name, code, code2, reconcile) in accounts {
        copy_row(
            out,
            &ACCOUNT,
            &[
                id.to_string(),
                NULL.into(),
                "1".into(),
                "1".into(),
                kind.into(),
                esc(&translated(name)),
                esc(&serde_json::json!({ "1": code, "2": code2 }).to_string()),
                "f".into(),
                if reconcile { "t" } else { "f" }.into(),
                "f".into(),
                t0.clone(),
                t0.clone(),
            ],
        )?;
    }
    copy_end(out)?;
    copy_begin(out, &JOURNAL)?;
    for (id, company, acc, code, kind, name) in [
        (
            JOURNAL_SALE,
            1,
            ACC_INCOME,
            "INV",
            "sale",
            "Customer Invoices",
        ),
        (JOURNAL_BANK, 1, ACC_BANK, "BNK1", "bank", "Bank"),
        (
            JOURNAL_PURCHASE,
            1,
            ACC_EXPENSE,
            "BILL",
            "purchase",
            "Vendor Bills",
        ),
        (
            JOURNAL_SALE_2,
            2,
            ACC_INCOME,
            "INV",
            "sale",
            "Customer Invoices",
        ),
        (JOURNAL_BANK_2, 2, ACC_BANK, "BNK1", "bank", "Bank"),
        (
            JOURNAL_SALE_2 + 2,
            2,
            ACC_EXPENSE,
            "BILL",
            "purchase",
            "Vendor Bills",
        ),
    ] {
        copy_row(
            out,
            &JOURNAL,
            &[
                id.to_string(),
                acc.to_string(),
                "10".into(),
                company.to_string(),
                "1".into(),
                "1".into(),
                code.into(),
                kind.into(),
                "invoice".into(),
                "odoo".into(),
                esc(&translated(name)),
                "t".into(),
                "f".into(),
                t0.clone(),
                t0.clone(),
            ],
        )?;
    }
    copy_end(out)?;

    // Tax tags: the grids of a tax report, "+" and "-" per grid as Odoo
    // makes them (the data uses the "+" ones), and a tag of another
    // applicability.
    copy_begin(out, &ACCOUNT_TAG)?;
    for (id, applicability, name, negate) in [
        (TAG_SALES_BASE, "taxes", "+03", "f"),
        (TAG_SALES_BASE + 1, "taxes", "-03", "t"),
        (TAG_SALES_TAX, "taxes", "+54", "f"),
        (TAG_SALES_TAX + 1, "taxes", "-54", "t"),
        (TAG_PURCHASES_BASE, "taxes", "+81", "f"),
        (TAG_PURCHASES_BASE + 1, "taxes", "-81", "t"),
        (TAG_ACCOUNTS, "accounts", "Operating Activities", "f"),
    ] {
        copy_row(
            out,
            &ACCOUNT_TAG,
            &[
                id.to_string(),
                "1".into(),
                applicability.into(),
                esc(&translated(name)),
                "t".into(),
                negate.into(),
            ],
        )?;
    }
    copy_end(out)?;

    // Taxes: 15% on sales (invoice lines carry it) and on purchases.
    copy_begin(out, &TAX)?;
    // The second company's: 10% (ids 3 and 4).
    for (id, company, kind, rate) in [
        (1, 1, "sale", 15),
        (2, 1, "purchase", 15),
        (3, 2, "sale", 10),
        (4, 2, "purchase", 10),
    ] {
        copy_row(
            out,
            &TAX,
            &[
                id.to_string(),
                company.to_string(),
                kind.into(),
                "percent".into(),
                esc(&translated(&format!("{rate}%"))),
                format!("{rate}.0"),
                "t".into(),
            ],
        )?;
    }
    copy_end(out)?;

    // Partners: the company itself (1), then customers.
    copy_begin(out, &PARTNER)?;
    let n_partners = scale.customers + 1;
    // The second company's partner comes after the customers.
    let company2_partner = n_partners + 1;
    for id in 1..=company2_partner {
        let (name, city, comment, lat) = if id == company2_partner {
            (
                "YourCompany (Antwerp)".to_string(),
                "Antwerp".to_string(),
                NULL.to_string(),
                "51.2194475".to_string(),
            )
        } else {
            let name = if id == 1 {
                "My Company (San Francisco)".to_string()
            } else {
                format!("{} #{id}", g.person())
            };
            let city = g.pick(CITIES).to_string();
            let comment = if id % 10 == 0 {
                esc(&g.html_note(3_000))
            } else {
                NULL.into()
            };
            let lat = format!("{:.7}", g.rng.gen_range(-90.0..90.0f64));
            (name, city, comment, lat)
        };
        let created = g.start + Duration::minutes(id as i64);
        copy_row(
            out,
            &PARTNER,
            &[
                id.to_string(),
                if id == company2_partner { "2" } else { "1" }.into(),
                ts(created),
                esc(&name),
                NULL.into(),
                id.to_string(),
                "1".into(),
                "1".into(),
                esc(&name),
                format!("C{id:05}"),
                "en_US".into(),
                "Europe/Brussels".into(),
                format!("BE0{:09}", 477_000_000 + id),
                "contact".into(),
                esc(&format!("{} Rue de la Loi", id % 200 + 1)),
                format!("{}", 1000 + id % 8000),
                esc(&city),
                "20".into(),
                esc(&format!("contact{id}@example.com")),
                format!("+32 2 555 {:04}", id % 10_000),
                comment,
                lat,
                "t".into(),
                if id == 1 || id == company2_partner || id % 3 == 0 {
                    "t"
                } else {
                    "f"
                }
                .into(),
                if id == 1 || id == company2_partner {
                    "0"
                } else {
                    "1"
                }
                .into(),
                "0".into(),
                esc(&serde_json::json!({ "1": (id % 5) as f64 * 1000.0 }).to_string()),
                "always_ask".into(),
                ts(created),
            ],
        )?;
    }
    copy_end(out)?;

    // Products.
    copy_begin(out, &PRODUCT_TEMPLATE)?;
    for p in 1..=scale.products {
        let name = format!("{} {}", PRODUCTS[(p - 1) % PRODUCTS.len()], p);
        copy_row(
            out,
            &PRODUCT_TEMPLATE,
            &[
                p.to_string(),
                "1".into(),
                "1".into(),
                "1".into(),
                NULL.into(),
                "1".into(),
                "1".into(),
                "consu".into(),
                "no".into(),
                format!("FURN_{p:04}"),
                esc(&translated(&name)),
                if p % 4 == 0 {
                    esc(&serde_json::json!({"en_US": format!("Sold with a 2-year warranty: {name}")}).to_string())
                } else {
                    NULL.into()
                },
                money(Gen::price(p)),
                format!("{:.2}", (p % 7) as f64 * 0.05),
                format!("{:.2}", (p % 11) as f64 * 1.5),
                "t".into(),
                "t".into(),
                "t".into(),
                if p % 3 == 0 { "f" } else { "t" }.into(),
                "none".into(),
                "no-message".into(),
                "no-message".into(),
                "order".into(),
                t0.clone(),
                t0.clone(),
            ],
        )?;
    }
    copy_end(out)?;
    copy_begin(out, &PRODUCT)?;
    for p in 1..=scale.products {
        copy_row(
            out,
            &PRODUCT,
            &[
                p.to_string(),
                p.to_string(),
                "1".into(),
                "1".into(),
                format!("FURN_{p:04}"),
                esc(&serde_json::json!({ "1": Gen::price(p) as f64 * 0.006 }).to_string()),
                format!("{:.2}", (p % 7) as f64 * 0.05),
                format!("{:.2}", (p % 11) as f64 * 1.5),
                "t".into(),
                t0.clone(),
                t0.clone(),
            ],
        )?;
    }
    copy_end(out)?;

    // Orders, lines, invoices, journal items, payments, stock moves.
    let mut orders = Vec::new();
    let mut lines = Vec::new();
    let mut moves = Vec::new();
    let mut items = Vec::new();
    let mut payments = Vec::new();
    let mut reconciles = Vec::new();
    let mut line_taxes: Vec<Vec<String>> = Vec::new();
    let mut line_tags: Vec<Vec<String>> = Vec::new();
    let mut stock = Vec::new();
    let mut layers: Vec<Vec<String>> = Vec::new();
    // Opening stock: 1,000 units of each product counted into WH/Stock.
    for p in 1..=scale.products {
        let cost = Gen::price(p) * 6 / 10;
        stock.push(vec![
            (stock.len() + 1).to_string(),
            "1".into(),
            p.to_string(),
            "1".into(),
            "14".into(),
            "8".into(),
            NULL.into(),
            "2".into(),
            "2".into(),
            esc(&format!("Opening stock: FURN_{p:04}")),
            "done".into(),
            NULL.into(),
            format!("WH/INV/{p:05}"),
            "make_to_stock".into(),
            "1000".into(),
            "1000".into(),
            "1000".into(),
            "t".into(),
            t0.clone(),
            t0.clone(),
            t0.clone(),
            format!("{}", cost as f64 / 100.0),
            NULL.into(),
        ]);
        layers.push(vec![
            (layers.len() + 1).to_string(),
            "1".into(),
            p.to_string(),
            stock.len().to_string(),
            esc(&format!("Opening stock: FURN_{p:04}")),
            "1000".into(),
            money(cost),
            money(cost * 1000),
            "1000".into(),
            money(cost * 1000),
            t0.clone(),
            t0.clone(),
        ]);
    }
    let mut line_id = 0usize;
    let mut move_id = 0usize;
    let mut item_id = 0usize;
    let mut inv_seq = 0usize;
    let mut refund_seq = 0usize;
    let mut pay_seq = 0usize;
    let span_minutes = 365 * 24 * 60;
    for o in 1..=scale.orders {
        let partner = g.rng.gen_range(2..=n_partners);
        let at = g.start + Duration::minutes((o * span_minutes / scale.orders) as i64);
        let n_lines = g.rng.gen_range(1..=5);
        let confirmed = g.rng.gen_bool(0.85);
        let invoiced = confirmed && g.rng.gen_bool(0.8);
        let paid = invoiced && g.rng.gen_bool(0.7);
        // A credit note for the first line of some invoices (Odoo: "Credit
        // Note", partial): reconciled with the invoice, whose residual and
        // payment fall by its total.
        let refunded = invoiced && n_lines >= 2 && o % 9 == 4;
        let invoice_status = if invoiced {
            "invoiced"
        } else if confirmed {
            "to invoice"
        } else {
            "no"
        };
        let mut untaxed = 0i64;
        let mut order_lines = Vec::new();
        for seq in 0..n_lines {
            line_id += 1;
            let product = g.rng.gen_range(1..=scale.products);
            let qty = g.rng.gen_range(1..=20) as i64;
            let price = Gen::price(product);
            let discount = if g.rng.gen_bool(0.2) { 10 } else { 0 };
            let subtotal = qty * price * (100 - discount) / 100;
            let tax = subtotal * 15 / 100;
            untaxed += subtotal;
            order_lines.push((line_id, product, qty, price, subtotal, tax));
            let state = if confirmed { "sale" } else { "draft" };
            lines.push(vec![
                line_id.to_string(),
                o.to_string(),
                (10 + seq).to_string(),
                "1".into(),
                "1".into(),
                partner.to_string(),
                "2".into(),
                product.to_string(),
                "1".into(),
                "2".into(),
                "2".into(),
                state.into(),
                invoice_status.into(),
                NULL.into(),
                esc(&format!(
                    "[FURN_{product:04}] {}",
                    PRODUCTS[(product - 1) % PRODUCTS.len()]
                )),
                qty.to_string(),
                money(price),
                discount.to_string(),
                money(subtotal),
                money(subtotal + tax),
                if confirmed {
                    qty.to_string()
                } else {
                    "0".into()
                },
                if invoiced && !(refunded && seq == 0) {
                    qty.to_string()
                } else {
                    "0".into()
                },
                ts(at),
                ts(at),
                format!("{}", tax as f64 / 100.0),
                "0".into(),
            ]);
            if confirmed {
                stock.push(vec![
                    (stock.len() + 1).to_string(),
                    "1".into(),
                    product.to_string(),
                    "1".into(),
                    "8".into(),
                    "5".into(),
                    partner.to_string(),
                    "2".into(),
                    "2".into(),
                    esc(&format!("S{o:05}: FURN_{product:04}")),
                    "done".into(),
                    format!("S{o:05}"),
                    format!("WH/OUT/{o:05}"),
                    "make_to_stock".into(),
                    qty.to_string(),
                    qty.to_string(),
                    qty.to_string(),
                    "t".into(),
                    ts(at + Duration::hours(4)),
                    ts(at),
                    ts(at + Duration::hours(4)),
                    format!("{}", price as f64 * 0.006),
                    line_id.to_string(),
                ]);
                let cost = Gen::price(product) * 6 / 10;
                layers.push(vec![
                    (layers.len() + 1).to_string(),
                    "1".into(),
                    product.to_string(),
                    stock.len().to_string(),
                    esc(&format!("WH/OUT/{o:05}")),
                    format!("-{qty}"),
                    money(cost),
                    money(-cost * qty),
                    "0".into(),
                    "0".into(),
                    ts(at + Duration::hours(4)),
                    ts(at + Duration::hours(4)),
                ]);
            }
        }
        let tax_total: i64 = order_lines.iter().map(|l| l.5).sum();
        let total = untaxed + tax_total;
        let state = if confirmed { "sale" } else { "draft" };
        orders.push(vec![
            o.to_string(),
            "1".into(),
            partner.to_string(),
            partner.to_string(),
            partner.to_string(),
            "1".into(),
            "2".into(),
            "2".into(),
            "2".into(),
            format!("S{o:05}"),
            state.into(),
            invoice_status.into(),
            date(at + Duration::days(30)),
            if o % 25 == 0 {
                esc(&g.html_note(2_500))
            } else {
                NULL.into()
            },
            "1.0".into(),
            money(untaxed),
            money(tax_total),
            money(total),
            "f".into(),
            "t".into(),
            "f".into(),
            ts(at),
            ts(at),
            ts(at),
            "1".into(),
            "direct".into(),
            // Every third order comes from an opportunity (sale_crm).
            if o % 3 == 0 {
                (o / 3 % scale.leads + 1).to_string()
            } else {
                NULL.into()
            },
        ]);
        if !invoiced {
            continue;
        }
        // Customer invoice: receivable debit = income credits + tax credit.
        move_id += 1;
        inv_seq += 1;
        let inv_id = move_id;
        let inv_at = at + Duration::days(1);
        let inv_name = format!("INV/{}/{inv_seq:05}", inv_at.format("%Y"));
        let refund_total = if refunded {
            order_lines[0].4 + order_lines[0].5
        } else {
            0
        };
        let residual = if paid { 0 } else { total - refund_total };
        let inv_prefix = format!("INV/{}/", inv_at.format("%Y"));
        let origin = format!("S{o:05}");
        moves.push(
            Entry {
                currency: 1,
                rate: 1,
                id: inv_id,
                seq: inv_seq,
                journal: JOURNAL_SALE,
                company: 1,
                partner,
                salesperson: true,
                prefix: &inv_prefix,
                name: &inv_name,
                reference: None,
                move_type: "out_invoice",
                payment_state: match (paid, refunded) {
                    (true, _) => "paid",
                    (false, true) => "partial",
                    (false, false) => "not_paid",
                },
                origin: Some(&origin),
                date: inv_at,
                due: true,
                untaxed,
                tax: tax_total,
                total,
                residual,
                total_signed: total,
                residual_signed: residual,
            }
            .row(),
        );
        let mut push_item = |items: &mut Vec<Vec<String>>, line: JournalItem| {
            item_id += 1;
            items.push(line.row(item_id));
        };
        for (i, l) in order_lines.iter().enumerate() {
            let pname = format!("[FURN_{:04}] {}", l.1, PRODUCTS[(l.1 - 1) % PRODUCTS.len()]);
            push_item(
                &mut items,
                JournalItem {
                    company: 1,
                    currency: 1,
                    rate: 1,
                    tag_invert: true,
                    move_id: inv_id,
                    journal: JOURNAL_SALE,
                    seq: 10 + i,
                    account: ACC_INCOME,
                    partner,
                    product: Some(l.1),
                    name: &pname,
                    display: "product",
                    debit: 0,
                    credit: l.4,
                    residual: 0,
                    qty: l.2,
                    price: l.3,
                    when: inv_at,
                    move_name: &inv_name,
                },
            );
            if let Some(row) = items.last() {
                line_taxes.push(vec![row[0].clone(), "1".into()]);
                line_tags.push(vec![row[0].clone(), TAG_SALES_BASE.to_string()]);
            }
        }
        push_item(
            &mut items,
            JournalItem {
                company: 1,
                currency: 1,
                rate: 1,
                tag_invert: true,
                move_id: inv_id,
                journal: JOURNAL_SALE,
                seq: 90,
                account: ACC_TAX,
                partner,
                product: None,
                name: "Tax 15%",
                display: "tax",
                debit: 0,
                credit: tax_total,
                residual: 0,
                qty: 1,
                price: tax_total,
                when: inv_at,
                move_name: &inv_name,
            },
        );
        if let Some(row) = items.last() {
            line_tags.push(vec![row[0].clone(), TAG_SALES_TAX.to_string()]);
            // A tag of another applicability on the same item: not a grid.
            line_tags.push(vec![row[0].clone(), TAG_ACCOUNTS.to_string()]);
        }
        push_item(
            &mut items,
            JournalItem {
                company: 1,
                currency: 1,
                rate: 1,
                tag_invert: true,
                move_id: inv_id,
                journal: JOURNAL_SALE,
                seq: 99,
                account: ACC_RECEIVABLE,
                partner,
                product: None,
                name: &inv_name,
                display: "payment_term",
                debit: total,
                credit: 0,
                residual,
                qty: 1,
                price: total,
                when: inv_at,
                move_name: &inv_name,
            },
        );
        let invoice_receivable = items.last().map(|r| r[0].clone()).unwrap_or_default();
        if refunded {
            // The credit note: income and tax debited back with the "-"
            // grids (not inverted: not an inbound document), receivable
            // credited and reconciled with the invoice's.
            let (_, product, qty, price, subtotal, tax) = order_lines[0];
            move_id += 1;
            refund_seq += 1;
            let refund_at = inv_at + Duration::days(5);
            let refund_prefix = format!("RINV/{}/", refund_at.format("%Y"));
            let refund_name = format!("{refund_prefix}{refund_seq:05}");
            let reason = format!("Reversal of: {inv_name}, damaged goods");
            moves.push(
                Entry {
                    currency: 1,
                    rate: 1,
                    id: move_id,
                    seq: refund_seq,
                    journal: JOURNAL_SALE,
                    company: 1,
                    partner,
                    salesperson: true,
                    prefix: &refund_prefix,
                    name: &refund_name,
                    reference: Some(&reason),
                    move_type: "out_refund",
                    payment_state: "paid",
                    origin: Some(&origin),
                    date: refund_at,
                    due: true,
                    untaxed: subtotal,
                    tax,
                    total: refund_total,
                    residual: 0,
                    total_signed: -refund_total,
                    residual_signed: 0,
                }
                .row(),
            );
            let pname = format!(
                "[FURN_{product:04}] {}",
                PRODUCTS[(product - 1) % PRODUCTS.len()]
            );
            let refund_line = JournalItem {
                company: 1,
                currency: 1,
                rate: 1,
                tag_invert: false,
                move_id,
                journal: JOURNAL_SALE,
                seq: 10,
                account: ACC_INCOME,
                partner,
                product: Some(product),
                name: &pname,
                display: "product",
                debit: subtotal,
                credit: 0,
                residual: 0,
                qty,
                price,
                when: refund_at,
                move_name: &refund_name,
            };
            push_item(&mut items, refund_line);
            if let Some(row) = items.last() {
                line_taxes.push(vec![row[0].clone(), "1".into()]);
                line_tags.push(vec![row[0].clone(), (TAG_SALES_BASE + 1).to_string()]);
            }
            push_item(
                &mut items,
                JournalItem {
                    seq: 90,
                    account: ACC_TAX,
                    product: None,
                    name: "Tax 15%",
                    display: "tax",
                    debit: tax,
                    qty: 1,
                    price: tax,
                    ..refund_line
                },
            );
            if let Some(row) = items.last() {
                line_tags.push(vec![row[0].clone(), (TAG_SALES_TAX + 1).to_string()]);
            }
            push_item(
                &mut items,
                JournalItem {
                    seq: 99,
                    account: ACC_RECEIVABLE,
                    product: None,
                    name: &refund_name,
                    display: "payment_term",
                    debit: 0,
                    credit: refund_total,
                    qty: 1,
                    price: refund_total,
                    ..refund_line
                },
            );
            let refund_receivable = items.last().map(|r| r[0].clone()).unwrap_or_default();
            reconciles.push(
                Reconcile {
                    debit_item: invoice_receivable.clone(),
                    credit_item: refund_receivable,
                    company: 1,
                    currency: 1,
                    rate: 1,
                    date: refund_at,
                    amount: refund_total,
                }
                .row(reconciles.len() + 1),
            );
        }
        if !paid {
            continue;
        }
        // The customer pays what the credit note left open.
        let total = total - refund_total;
        move_id += 1;
        pay_seq += 1;
        let pay_at = inv_at + Duration::days(g.rng.gen_range(1..40));
        let pay_name = format!("PBNK1/{}/{pay_seq:05}", pay_at.format("%Y"));
        let pay_prefix = format!("PBNK1/{}/", pay_at.format("%Y"));
        let payment = Payment {
            id: pay_seq,
            move_id,
            seq: pay_seq,
            journal: JOURNAL_BANK,
            company: 1,
            currency: 1,
            rate: 1,
            partner,
            prefix: &pay_prefix,
            name: &pay_name,
            memo: &inv_name,
            date: pay_at,
            amount: total,
            inbound: true,
        };
        moves.push(payment.entry());
        // Bank debit, receivable credit.
        for (seq, account, debit, credit) in
            [(10, ACC_BANK, total, 0), (20, ACC_RECEIVABLE, 0, total)]
        {
            push_item(
                &mut items,
                JournalItem {
                    company: 1,
                    currency: 1,
                    rate: 1,
                    tag_invert: false,
                    move_id,
                    journal: JOURNAL_BANK,
                    seq,
                    account,
                    partner,
                    product: None,
                    name: &pay_name,
                    display: "product",
                    debit,
                    credit,
                    residual: 0,
                    qty: 1,
                    price: total,
                    when: pay_at,
                    move_name: &pay_name,
                },
            );
        }
        let payment_receivable = items.last().map(|r| r[0].clone()).unwrap_or_default();
        reconciles.push(
            Reconcile {
                debit_item: invoice_receivable,
                credit_item: payment_receivable,
                company: 1,
                currency: 1,
                rate: 1,
                date: pay_at,
                amount: total,
            }
            .row(reconciles.len() + 1),
        );
        payments.push(payment.row());
    }
    // Vendor bills (expense debit, payable credit), about 60% paid by a bank
    // payment reconciled with the bill's payable line.
    let n_bills = (scale.orders / 5).max(2);
    let mut bill_seq = 0usize;
    for b in 1..=n_bills {
        let vendor = g.rng.gen_range(2..=n_partners);
        let at = g.start + Duration::minutes((b * span_minutes / n_bills) as i64 + 600);
        let total: i64 = g.rng.gen_range(100..5000) * 100;
        let paid = g.rng.gen_bool(0.6);
        let residual = if paid { 0 } else { total };
        move_id += 1;
        bill_seq += 1;
        let bill_id = move_id;
        let bill_name = format!("BILL/{}/{bill_seq:05}", at.format("%Y"));
        let mut item = |items: &mut Vec<Vec<String>>, line: JournalItem| {
            item_id += 1;
            items.push(line.row(item_id));
            item_id
        };
        let bill_prefix = format!("BILL/{}/", at.format("%Y"));
        let bill_ref = format!("INV-{b:04}");
        moves.push(
            Entry {
                currency: 1,
                rate: 1,
                id: bill_id,
                seq: bill_seq,
                journal: JOURNAL_PURCHASE,
                company: 1,
                partner: vendor,
                salesperson: true,
                prefix: &bill_prefix,
                name: &bill_name,
                reference: Some(&bill_ref),
                move_type: "in_invoice",
                payment_state: if paid { "paid" } else { "not_paid" },
                origin: None,
                date: at,
                due: true,
                untaxed: total,
                tax: 0,
                total,
                residual,
                total_signed: -total,
                residual_signed: -residual,
            }
            .row(),
        );
        // Every line of the bill and its payment: the vendor, no product,
        // one unit at the bill's total.
        let bill_line = JournalItem {
            company: 1,
            currency: 1,
            rate: 1,
            tag_invert: false,
            move_id: bill_id,
            journal: JOURNAL_PURCHASE,
            seq: 10,
            account: ACC_EXPENSE,
            partner: vendor,
            product: None,
            name: &bill_name,
            display: "product",
            debit: total,
            credit: 0,
            residual: 0,
            qty: 1,
            price: total,
            when: at,
            move_name: &bill_name,
        };
        let bill_item = item(&mut items, bill_line);
        line_tags.push(vec![bill_item.to_string(), TAG_PURCHASES_BASE.to_string()]);
        let bill_payable = item(
            &mut items,
            JournalItem {
                seq: 99,
                account: ACC_PAYABLE,
                display: "payment_term",
                debit: 0,
                credit: total,
                residual: -residual,
                ..bill_line
            },
        );
        if !paid {
            continue;
        }
        move_id += 1;
        pay_seq += 1;
        let pay_at = at + Duration::days(g.rng.gen_range(5..45));
        let pay_name = format!("PBNK1/{}/{pay_seq:05}", pay_at.format("%Y"));
        let pay_prefix = format!("PBNK1/{}/", pay_at.format("%Y"));
        let payment = Payment {
            id: pay_seq,
            move_id,
            seq: pay_seq,
            journal: JOURNAL_BANK,
            company: 1,
            currency: 1,
            rate: 1,
            partner: vendor,
            prefix: &pay_prefix,
            name: &pay_name,
            memo: &bill_name,
            date: pay_at,
            amount: total,
            inbound: false,
        };
        moves.push(payment.entry());
        let payment_line = JournalItem {
            move_id,
            journal: JOURNAL_BANK,
            name: &pay_name,
            when: pay_at,
            move_name: &pay_name,
            ..bill_line
        };
        let payment_payable = item(
            &mut items,
            JournalItem {
                seq: 10,
                account: ACC_PAYABLE,
                display: "payment_term",
                ..payment_line
            },
        );
        item(
            &mut items,
            JournalItem {
                seq: 20,
                account: ACC_BANK,
                display: "payment_term",
                debit: 0,
                credit: total,
                ..payment_line
            },
        );
        reconciles.push(
            Reconcile {
                debit_item: payment_payable.to_string(),
                credit_item: bill_payable.to_string(),
                company: 1,
                currency: 1,
                rate: 1,
                date: pay_at,
                amount: total,
            }
            .row(reconciles.len() + 1),
        );
        payments.push(payment.row());
    }
    // The second company: invoices straight from its sales journal (no
    // orders), 10% tax with the same grids, about 60% paid through its own
    // bank journal. A generator of its own keeps the first company's data
    // as it was.
    let mut g2 = Gen::new(seed.wrapping_add(2));
    let n_invoices_2 = (scale.orders / 10).max(2);
    let (mut inv2_seq, mut pay2_seq) = (0usize, 0usize);
    for d in 1..=n_invoices_2 {
        let partner = g2.rng.gen_range(2..=n_partners);
        let at = g.start + Duration::minutes((d * span_minutes / n_invoices_2) as i64 + 300);
        let n_lines = g2.rng.gen_range(1..=3);
        let paid = g2.rng.gen_bool(0.6);
        // Every fourth invoice is in Czech koruna, 25 to the euro.
        let (currency, rate) = if d % 4 == 0 {
            (CURRENCY_CZK, 25)
        } else {
            (1, 1)
        };
        let lines2: Vec<(usize, i64, i64, i64, i64)> = (0..n_lines)
            .map(|_| {
                let product = g2.rng.gen_range(1..=scale.products);
                let qty = g2.rng.gen_range(1..=10) as i64;
                let price = Gen::price(product);
                (product, qty, price, qty * price, qty * price / 10)
            })
            .collect();
        let untaxed: i64 = lines2.iter().map(|l| l.3).sum();
        let tax_total: i64 = lines2.iter().map(|l| l.4).sum();
        let total = untaxed + tax_total;
        let residual = if paid { 0 } else { total };
        move_id += 1;
        inv2_seq += 1;
        let inv_id = move_id;
        let prefix = format!("INV/{}/", at.format("%Y"));
        let inv_name = format!("{prefix}{inv2_seq:05}");
        moves.push(
            Entry {
                currency,
                rate,
                id: inv_id,
                seq: inv2_seq,
                journal: JOURNAL_SALE_2,
                company: 2,
                partner,
                salesperson: true,
                prefix: &prefix,
                name: &inv_name,
                reference: None,
                move_type: "out_invoice",
                payment_state: if paid { "paid" } else { "not_paid" },
                origin: None,
                date: at,
                due: true,
                untaxed,
                tax: tax_total,
                total,
                residual,
                total_signed: total,
                residual_signed: residual,
            }
            .row(),
        );
        let mut item = |items: &mut Vec<Vec<String>>, line: JournalItem| {
            item_id += 1;
            items.push(line.row(item_id));
            item_id
        };
        let base = JournalItem {
            company: 2,
            currency,
            rate,
            tag_invert: true,
            move_id: inv_id,
            journal: JOURNAL_SALE_2,
            seq: 10,
            account: ACC_INCOME,
            partner,
            product: None,
            name: &inv_name,
            display: "product",
            debit: 0,
            credit: 0,
            residual: 0,
            qty: 1,
            price: 0,
            when: at,
            move_name: &inv_name,
        };
        for (i, &(product, qty, price, subtotal, _)) in lines2.iter().enumerate() {
            let pname = format!(
                "[FURN_{product:04}] {}",
                PRODUCTS[(product - 1) % PRODUCTS.len()]
            );
            let id = item(
                &mut items,
                JournalItem {
                    seq: 10 + i,
                    product: Some(product),
                    name: &pname,
                    credit: subtotal,
                    qty,
                    price,
                    ..base
                },
            );
            line_taxes.push(vec![id.to_string(), "3".into()]);
            line_tags.push(vec![id.to_string(), TAG_SALES_BASE.to_string()]);
        }
        let tax_item = item(
            &mut items,
            JournalItem {
                seq: 90,
                account: ACC_TAX,
                name: "Tax 10%",
                display: "tax",
                credit: tax_total,
                price: tax_total,
                ..base
            },
        );
        line_tags.push(vec![tax_item.to_string(), TAG_SALES_TAX.to_string()]);
        let receivable = item(
            &mut items,
            JournalItem {
                seq: 99,
                account: ACC_RECEIVABLE,
                display: "payment_term",
                debit: total,
                residual,
                price: total,
                ..base
            },
        );
        if !paid {
            continue;
        }
        move_id += 1;
        pay_seq += 1;
        pay2_seq += 1;
        let pay_at = at + Duration::days(g2.rng.gen_range(3..50));
        let pay_prefix = format!("PBNK1/{}/", pay_at.format("%Y"));
        let pay_name = format!("{pay_prefix}{pay2_seq:05}");
        let payment = Payment {
            id: pay_seq,
            move_id,
            seq: pay2_seq,
            journal: JOURNAL_BANK_2,
            company: 2,
            currency,
            rate,
            partner,
            prefix: &pay_prefix,
            name: &pay_name,
            memo: &inv_name,
            date: pay_at,
            amount: total,
            inbound: true,
        };
        moves.push(payment.entry());
        let payment_item = JournalItem {
            tag_invert: false,
            move_id,
            journal: JOURNAL_BANK_2,
            name: &pay_name,
            when: pay_at,
            move_name: &pay_name,
            price: total,
            ..base
        };
        item(
            &mut items,
            JournalItem {
                seq: 10,
                account: ACC_BANK,
                debit: total,
                ..payment_item
            },
        );
        let paid_item = item(
            &mut items,
            JournalItem {
                seq: 20,
                account: ACC_RECEIVABLE,
                credit: total,
                ..payment_item
            },
        );
        reconciles.push(
            Reconcile {
                debit_item: receivable.to_string(),
                credit_item: paid_item.to_string(),
                company: 2,
                currency,
                rate,
                date: pay_at,
                amount: total,
            }
            .row(reconciles.len() + 1),
        );
        payments.push(payment.row());
    }
    for (t, rows) in [
        (&SALE_ORDER, &orders),
        (&SALE_ORDER_LINE, &lines),
        (&MOVE, &moves),
        (&MOVE_LINE, &items),
        (&LINE_TAX, &line_taxes),
        (&LINE_TAG, &line_tags),
        (&PAYMENT, &payments),
        (&PARTIAL_RECONCILE, &reconciles),
        (&STOCK_MOVE, &stock),
        (&VALUATION_LAYER, &layers),
    ] {
        copy_begin(out, t)?;
        for r in rows {
            copy_row(out, t, r)?;
        }
        copy_end(out)?;
    }

    copy_begin(out, &LEAD)?;
    for l in 1..=scale.leads {
        let at = g.start + Duration::hours(l as i64 * 7);
        let won = l % 4 == 0;
        let contact = g.person();
        copy_row(
            out,
            &LEAD,
            &[
                l.to_string(),
                "2".into(),
                "1".into(),
                "1".into(),
                if won { "4" } else { "1" }.into(),
                if l % 2 == 0 {
                    (l % scale.customers + 2).to_string()
                } else {
                    NULL.into()
                },
                "2".into(),
                "2".into(),
                esc(&format!("{}'s opportunity", contact)),
                if l % 3 == 0 { "lead" } else { "opportunity" }.into(),
                (l % 4).to_string(),
                esc(&contact),
                NULL.into(),
                esc(&format!("lead{l}@example.org")),
                esc(g.pick(CITIES)),
                date(at + Duration::days(20)),
                if l % 5 == 0 {
                    esc(&g.html_note(600))
                } else {
                    NULL.into()
                },
                money(g.rng.gen_range(1_000..5_000_000)),
                "t".into(),
                if won {
                    ts(at + Duration::days(9))
                } else {
                    NULL.into()
                },
                ts(at),
                ts(at),
                if won { "100" } else { "33.5" }.into(),
            ],
        )?;
    }
    copy_end(out)?;
    for t in TABLES
        .iter()
        .filter(|t| t.columns[0].1.starts_with("serial"))
    {
        writeln!(
            out,
            "SELECT setval(pg_get_serial_sequence('{0}', 'id'), coalesce(max(id), 0) + 1, false) FROM {0};",
            t.name
        )?;
    }
    writeln!(out, "COMMIT;\nANALYZE;")?;
    Ok(())
}

/// Write `transactions` Odoo-like write transactions against a base loaded
/// with the same `scale` (ids of new rows come from the tables' sequences).
pub fn write_workload(
    out: &mut impl Write,
    scale: Scale,
    seed: u64,
    transactions: usize,
) -> io::Result<()> {
    let mut g = Gen::new(seed ^ 0x5eed_0dd0);
    let n_partners = scale.customers + 1;
    let now = "(now() at time zone 'UTC')";
    writeln!(out, "SET client_min_messages = warning;")?;
    for i in 0..transactions {
        writeln!(out, "BEGIN;")?;
        match i % 8 {
            // New quotation with lines, confirmed in the same transaction (rows
            // inserted then updated, as the ORM does).
            0..=2 => {
                let partner = g.rng.gen_range(2..=n_partners);
                writeln!(
                    out,
                    "INSERT INTO sale_order (company_id, partner_id, partner_invoice_id, partner_shipping_id, currency_id, user_id, create_uid, write_uid, name, state, invoice_status, currency_rate, amount_untaxed, amount_tax, amount_total, locked, require_signature, require_payment, create_date, date_order, write_date, prepayment_percent, picking_policy) \
                     VALUES (1, {partner}, {partner}, {partner}, 1, 2, 2, 2, 'S' || lpad(currval(pg_get_serial_sequence('sale_order','id'))::text, 5, '0'), 'draft', 'no', 1.0, 0, 0, 0, false, true, false, {now}, {now}, {now}, 1, 'direct');"
                )?;
                let n = g.rng.gen_range(1..=4);
                for s in 0..n {
                    let p = g.rng.gen_range(1..=scale.products);
                    let qty = g.rng.gen_range(1..=12);
                    let price = Gen::price(p);
                    let sub = qty * price;
                    writeln!(
                        out,
                        "INSERT INTO sale_order_line (order_id, sequence, company_id, currency_id, order_partner_id, salesman_id, product_id, product_uom, create_uid, write_uid, state, invoice_status, name, product_uom_qty, price_unit, discount, price_subtotal, price_total, qty_delivered, qty_invoiced, create_date, write_date, price_tax, customer_lead) \
                         VALUES (currval(pg_get_serial_sequence('sale_order','id')), {seq}, 1, 1, {partner}, 2, {p}, 1, 2, 2, 'draft', 'no', {name}, {qty}, {price}, 0, {sub}, {tot}, 0, 0, {now}, {now}, {tax}, 0);",
                        seq = 10 + s,
                        name = sql_str(&format!(
                            "[FURN_{p:04}] {}",
                            PRODUCTS[(p - 1) % PRODUCTS.len()]
                        )),
                        price = money(price),
                        sub = money(sub),
                        tot = money(sub * 115 / 100),
                        tax = sub as f64 * 0.15 / 100.0,
                    )?;
                }
                writeln!(
                    out,
                    "UPDATE sale_order o SET amount_untaxed = s.u, amount_tax = round(s.u * 0.15, 2), amount_total = s.u + round(s.u * 0.15, 2), state = 'sale', invoice_status = 'to invoice', write_date = {now} \
                     FROM (SELECT order_id, sum(price_subtotal) u FROM sale_order_line WHERE order_id = (SELECT currval(pg_get_serial_sequence('sale_order','id'))) GROUP BY order_id) s WHERE o.id = s.order_id;\n\
                     UPDATE sale_order_line SET state = 'sale', invoice_status = 'to invoice', qty_delivered = product_uom_qty, write_date = {now} WHERE order_id = (SELECT currval(pg_get_serial_sequence('sale_order','id')));"
                )?;
            }
            // Partner e-mail edit.
            3 => {
                let p = g.rng.gen_range(2..=n_partners);
                writeln!(
                    out,
                    "UPDATE res_partner SET email = 'contact{p}.{i}@example.net', write_date = {now}, write_uid = 2 WHERE id = {p};"
                )?;
            }
            // Invoice the oldest order still to invoice: move + balanced items.
            4 | 5 => {
                writeln!(
                    out,
                    "WITH o AS (SELECT id, partner_id, name, amount_untaxed, amount_tax, amount_total FROM sale_order WHERE invoice_status = 'to invoice' ORDER BY id LIMIT 1 FOR UPDATE), \
                     m AS (INSERT INTO account_move (journal_id, company_id, partner_id, commercial_partner_id, currency_id, invoice_user_id, create_uid, write_uid, name, state, move_type, auto_post, payment_state, invoice_origin, date, invoice_date, invoice_date_due, amount_untaxed, amount_tax, amount_total, amount_residual, amount_total_signed, amount_residual_signed, create_date, write_date) \
                       SELECT 1, 1, partner_id, partner_id, 1, 2, 2, 2, 'INV/W/' || id, 'posted', 'out_invoice', 'no', 'not_paid', name, current_date, current_date, current_date + 30, amount_untaxed, amount_tax, amount_total, amount_total, amount_total, amount_total, {now}, {now} FROM o RETURNING id, partner_id, name, amount_untaxed, amount_tax, amount_total) \
                     INSERT INTO account_move_line (move_id, journal_id, company_id, company_currency_id, sequence, account_id, currency_id, partner_id, create_uid, write_uid, move_name, parent_state, name, display_type, date, debit, credit, balance, amount_currency, amount_residual, quantity, price_unit, reconciled, create_date, write_date) \
                       SELECT id, 1, 1, 1, 10, {inc}, 1, partner_id, 2, 2, name, 'posted', 'Sales', 'product', current_date, 0, amount_untaxed, -amount_untaxed, -amount_untaxed, 0, 1, amount_untaxed, false, {now}, {now} FROM m \
                       UNION ALL SELECT id, 1, 1, 1, 90, {tax}, 1, partner_id, 2, 2, name, 'posted', 'Tax 15%', 'tax', current_date, 0, amount_tax, -amount_tax, -amount_tax, 0, 1, amount_tax, false, {now}, {now} FROM m \
                       UNION ALL SELECT id, 1, 1, 1, 99, {rec}, 1, partner_id, 2, 2, name, 'posted', name, 'payment_term', current_date, amount_total, 0, amount_total, amount_total, amount_total, 1, amount_total, false, {now}, {now} FROM m;\n\
                     UPDATE sale_order SET invoice_status = 'invoiced', write_date = {now} WHERE id = (SELECT min(id) FROM sale_order WHERE invoice_status = 'to invoice');",
                    inc = ACC_INCOME,
                    tax = ACC_TAX,
                    rec = ACC_RECEIVABLE,
                )?;
            }
            // A long HTML note, then (next transaction of this kind) another
            // column of the same row: the note arrives as unchanged TOAST.
            6 => {
                let o = g.rng.gen_range(1..=scale.orders);
                if (i / 8) % 2 == 0 {
                    writeln!(
                        out,
                        "UPDATE sale_order SET note = {}, write_date = {now} WHERE id = {o};",
                        sql_str(&g.html_note(30_000))
                    )?;
                } else {
                    writeln!(
                        out,
                        "UPDATE sale_order SET validity_date = validity_date + 1, write_date = {now} WHERE note IS NOT NULL AND id % 7 = {};",
                        o % 7
                    )?;
                }
            }
            // Delete a draft line, and a CRM lead stage change.
            _ => {
                writeln!(
                    out,
                    "DELETE FROM sale_order_line WHERE id = (SELECT min(l.id) FROM sale_order_line l JOIN sale_order o ON o.id = l.order_id WHERE o.state = 'draft');\n\
                     UPDATE crm_lead SET stage_id = stage_id + 1, probability = least(probability + 10, 100), write_date = {now} WHERE id = {};",
                    g.rng.gen_range(1..=scale.leads)
                )?;
            }
        }
        writeln!(out, "COMMIT;")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_deterministic_per_seed() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut c = Vec::new();
        write_base(&mut a, Scale::new(0.1), 7).unwrap();
        write_base(&mut b, Scale::new(0.1), 7).unwrap();
        write_base(&mut c, Scale::new(0.1), 8).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn copy_escaping() {
        assert_eq!(esc("a\tb\\c\nd"), "a\\tb\\\\c\\nd");
        assert_eq!(money(-1234), "-12.34");
        assert_eq!(money(5), "0.05");
    }

    #[test]
    fn rows_match_their_column_lists() {
        // debug_assert in copy_row fires on a mismatch.
        let mut out = Vec::new();
        write_base(&mut out, Scale::new(0.2), 1).unwrap();
        write_workload(&mut out, Scale::new(0.2), 1, 40).unwrap();
    }
}
