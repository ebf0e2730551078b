//! Lineage as a mermaid graph.

use pgrx::prelude::*;

use crate::catalog;

fn node_id(node: &str) -> String {
    node.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Render lineage edges (upstream, downstream) as a mermaid flowchart.
pub(crate) fn render(edges: &[(String, String)]) -> String {
    let mut out = String::from("flowchart LR\n");
    let mut nodes: Vec<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    nodes.sort();
    nodes.dedup();
    for n in &nodes {
        let shape = match n.split('.').next() {
            Some("bronze") => ("[(", ")]"),
            Some("silver") => ("[", "]"),
            _ => ("[[", "]]"),
        };
        out.push_str(&format!(
            "    {}{}\"{}\"{}\n",
            node_id(n),
            shape.0,
            n,
            shape.1
        ));
    }
    for (up, down) in edges {
        out.push_str(&format!("    {} --> {}\n", node_id(up), node_id(down)));
    }
    out
}

/// The whole pipeline's lineage as a mermaid graph (paste into a README).
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn lineage_mermaid() -> String {
    let edges = catalog::texts(
        "SELECT upstream || E'\\t' || downstream FROM medallion.dependencies ORDER BY upstream, downstream",
        &[],
    );
    let edges: Vec<(String, String)> = edges
        .iter()
        .filter_map(|e| e.split_once('\t'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    render(&edges)
}

#[cfg(test)]
mod unit {
    #[test]
    fn mermaid() {
        let g = super::render(&[
            (
                "bronze.public.sale_order".into(),
                "silver.sale_order".into(),
            ),
            ("silver.sale_order".into(), "gold.revenue".into()),
        ]);
        assert_eq!(
            g,
            "flowchart LR\n    bronze_public_sale_order[(\"bronze.public.sale_order\")]\n    \
             gold_revenue[[\"gold.revenue\"]]\n    silver_sale_order[\"silver.sale_order\"]\n    \
             bronze_public_sale_order --> silver_sale_order\n    silver_sale_order --> gold_revenue\n"
        );
    }
}
